"""``llmrec users``: look at and edit the user-state store the serving gateway personalizes from."""

from __future__ import annotations

import json

from llmrec.cli.common import add_command


def register(sub) -> None:
    p = add_command(sub, "users", help="inspect and edit a user-state store (profiles, prefixes, adapters)",
                    description="A user-state store is a directory or a .sqlite file, written by training "
                    "(BUMP profiles, TAP-PER/SAILRec prefixes) and read by 'llmrec serve --user-state'.\n\n"
                    "examples:\n"
                    "  llmrec users set --store runs/users --user A1B2 --profile 'Loves jazz; plays bass.'\n"
                    "  llmrec users set --store runs/users --user A1B2 --prefix prefix.npy --adapter a1b2-lora\n"
                    "  llmrec users show --store runs/users --user A1B2\n"
                    "  llmrec users list --store runs/users")
    usub = p.add_subparsers(dest="users_command", metavar="USERS_COMMAND", required=True)

    s = add_command(usub, "set", help="create or change a user's state (fields not given are kept)")
    s.add_argument("--store", required=True, help="directory or .sqlite/.db file (created if missing)")
    s.add_argument("--user", required=True, help="the id clients send in OpenAI's 'user' field")
    s.add_argument("--profile", default=None, help="text profile injected into the user's prompts")
    s.add_argument("--profile-file", default=None, help="read the profile from this text file")
    s.add_argument("--prefix", default=None, metavar="FILE.npy", help="soft prefix [K, hidden] sent as prompt_embeds")
    s.add_argument("--adapter", default=None, help="LoRA adapter name to route the user to ('' removes it)")
    s.add_argument("--history", default=None, help="comma-separated item ids, oldest first")
    s.set_defaults(func=run_set)

    g = add_command(usub, "show", help="print a user's state as JSON (prefix as its shape)")
    g.add_argument("--store", required=True)
    g.add_argument("--user", required=True)
    g.set_defaults(func=run_show)

    ls = add_command(usub, "list", help="list the users in a store and what personalizes each")
    ls.add_argument("--store", required=True)
    ls.set_defaults(func=run_list)

    d = add_command(usub, "delete", help="remove a user's state")
    d.add_argument("--store", required=True)
    d.add_argument("--user", required=True)
    d.set_defaults(func=run_delete)


def run_set(args) -> int:
    from pathlib import Path

    import numpy as np

    from llmrec.errors import LlmrecError
    from llmrec.serving.user_state import open_user_store

    if args.profile is not None and args.profile_file:
        raise LlmrecError("give --profile or --profile-file, not both")
    profile = Path(args.profile_file).read_text().strip() if args.profile_file else args.profile
    prefix = None
    if args.prefix:
        try:
            prefix = np.load(args.prefix, allow_pickle=False)
        except ValueError as e:
            raise LlmrecError(f"--prefix {args.prefix}: not a plain .npy array: {e}") from None
    history = [h.strip() for h in args.history.split(",") if h.strip()] if args.history is not None else None
    state = open_user_store(args.store).update(args.user, profile=profile, prefix=prefix, adapter=args.adapter,
                                               history=history, meta={"written_by": "llmrec users set"})
    print(f"{args.user}: {', '.join(state.mechanisms()) or 'no personalization'}")
    return 0


def _describe(state) -> dict:
    return {"user_id": state.user_id, "mechanisms": state.mechanisms(), "profile": state.profile,
            "prefix_shape": list(state.prefix.shape) if state.prefix is not None else None,
            "adapter": state.adapter, "history": state.history, "meta": state.meta}


def run_show(args) -> int:
    from llmrec.errors import LlmrecError
    from llmrec.serving.user_state import open_user_store

    state = open_user_store(args.store, create=False).get(args.user)
    if state is None:
        raise LlmrecError(f"no user {args.user!r} in {args.store}")
    print(json.dumps(_describe(state), indent=2, ensure_ascii=False))
    return 0


def run_list(args) -> int:
    from llmrec.serving.user_state import open_user_store

    store = open_user_store(args.store, create=False)
    ids = store.user_ids()
    for uid in ids:
        print(f"{uid}\t{','.join(store.get(uid).mechanisms()) or '-'}")
    print(f"{len(ids)} users")
    return 0


def run_delete(args) -> int:
    from llmrec.errors import LlmrecError
    from llmrec.serving.user_state import open_user_store

    if not open_user_store(args.store, create=False).delete(args.user):
        raise LlmrecError(f"no user {args.user!r} in {args.store}")
    print(f"deleted {args.user}")
    return 0
