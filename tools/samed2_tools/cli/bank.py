"""`samed2 bank`: convert SAMed-2's official memory bank pickle to a safetensors bank, once, safely."""


def register(sub) -> None:
    p = sub.add_parser("bank", help="SAMed-2 confidence memory bank files")
    actions = p.add_subparsers(dest="bank_command", required=True)
    imp = actions.add_parser("import", help="convert the official pickled bank (never executing code in it)")
    imp.add_argument("file", help="the official bank, e.g. memory_bank_list_640.pkl")
    imp.add_argument("--out", required=True, help="safetensors bank to write")
    imp.add_argument("--capacity", type=int, default=640, help="entries the bank keeps when updated")
    imp.set_defaults(func=run_import)
    info = actions.add_parser("info", help="describe a safetensors bank")
    info.add_argument("file")
    info.set_defaults(func=run_info)


def run_import(args) -> int:
    from samed2.bank import import_reference_bank

    bank = import_reference_bank(args.file, args.out, capacity=args.capacity)
    print(f"wrote {args.out}: {len(bank)} entries, keys {tuple(bank.keys.shape)}, "
          f"memories {tuple(bank.features.shape[1:])}")
    return 0


def run_info(args) -> int:
    from samed2.bank import ConfidenceBank

    bank = ConfidenceBank.load(args.file)
    ious = bank.ious
    print(f"{args.file}: {len(bank)} of {bank.capacity} entries, keys {tuple(bank.keys.shape)} {bank.keys.dtype}, "
          f"memories {tuple(bank.features.shape[1:])} {bank.features.dtype}, "
          f"IoU {ious.min().item():.3f}..{ious.max().item():.3f}" if len(bank) else f"{args.file}: empty")
    return 0
