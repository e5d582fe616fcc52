"""`w2v`: train, evaluate, query, import and export models from the command line.

Every handler returns an exit code; bad input ends in one `w2v: error: ...` line on
stderr and a non-zero status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from model.config import Progress, TrainConfig
from model.errors import CorpusError, W2VError
from model.vectors import Vectors

if TYPE_CHECKING:
    from model.evaluation import AnalogyQuestions, WordPairs
    from model.neighbours import NeighbourTable

    EvaluationFiles = tuple[AnalogyQuestions | None, list[WordPairs]]

EXIT_ERROR = 1
EXIT_USAGE = 2


class CLIError(Exception):
    """A user mistake detected by the CLI itself (for example a missing file)."""


def _int_at_least(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            kind = "a positive integer" if least == 1 else f"an integer of at least {least}"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


class ProgressBar:
    """One self-rewriting stderr line: percentage, epoch, words/s, loss and ETA."""

    def __init__(self, stream: TextIO | None = None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.interactive = self.stream.isatty()
        self.last_line = ""

    def __call__(self, p: Progress) -> None:
        frac = p.words_done / p.words_total if p.words_total else 1.0
        eta = f"{p.eta_s:5.0f}s" if p.eta_s is not None else "   ?s"
        loss = f"{p.loss:.4f}" if p.loss is not None else "-"
        line = (
            f"{self.gauge(frac)} epoch {p.epoch}/{p.epochs} "
            f"{p.words_per_sec / 1e3:8.0f}k words/s loss {loss} lr {p.alpha:.5f} eta {eta}"
        )
        self.show(line, logged=line != self.last_line)

    def gauge(self, frac: float) -> str:
        """The bar and the percentage: "[####......]  40.0%"."""
        filled = int(frac * self.width)
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {frac * 100:5.1f}%"

    def show(self, line: str, *, logged: bool) -> None:
        """Rewrite the line on a terminal; elsewhere (a log) append it when `logged`."""
        if self.interactive:
            self.stream.write("\r" + line)
        elif logged:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last_line = line

    def close(self) -> None:
        if self.interactive and self.last_line:
            self.stream.write("\n")


class IndexProgress:
    """The neighbour table's progress on stderr, in the progress bar's style: on a large
    vocabulary the build takes minutes after training has reached 100 %."""

    def __init__(self, stream: TextIO | None = None, width: int = 30):
        self.bar = ProgressBar(stream, width)
        self.start = time.perf_counter()
        self.tenths = -1

    def __call__(self, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        elapsed = time.perf_counter() - self.start
        eta = f"{elapsed * (total - done) / done:5.0f}s" if done else "   ?s"
        # A log gets a line per tenth: the build reports every chunk, hundreds of times.
        tenths = int(frac * 10)
        logged, self.tenths = tenths != self.tenths, tenths
        self.bar.show(f"{self.bar.gauge(frac)} neighbours of {done}/{total} words eta {eta}", logged=logged)

    def close(self) -> None:
        self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    from model.store import check_writable_target, save_model
    from model.trainer import train

    out = Path(args.out)
    _check_out(out, args.force)
    cfg = TrainConfig(
        vector_size=args.vector_size, window=args.window, negative=args.negative, ns_exponent=args.ns_exponent,
        min_count=args.min_count, max_vocab=args.max_vocab, sample=args.sample, epochs=args.epochs,
        alpha=args.alpha, min_alpha=args.min_alpha, batch_words=args.batch_size, threads=args.threads,
        device=args.device, engine=args.engine, seed=args.seed, lowercase=args.lowercase,
        checkpoint_every=args.checkpoint_every, min_n=args.min_n, max_n=args.max_n, buckets=args.buckets,
    ).validate()
    # Everything that can be checked before training is: a typo must not cost a training run.
    check_writable_target(out, overwrite=args.force)
    if args.checkpoint_dir is not None:
        ckpt, target = Path(args.checkpoint_dir).resolve(), out.resolve()
        if ckpt == target or target in ckpt.parents:
            raise CLIError("--checkpoint-dir must be outside --out: the saved model replaces that folder")
    evaluation = _read_evaluation_files(args.analogies, args.pairs or [])
    bar = None if args.quiet else ProgressBar()
    start = time.perf_counter()
    try:
        corpus = _stdin_sentences() if args.corpus == "-" else args.corpus
        model = train(corpus, cfg, progress=bar, checkpoint_dir=args.checkpoint_dir)
    finally:
        if bar is not None:
            bar.close()
    # A failure after training (no pair among the model's words, nothing to index) still
    # saves the model, without the part that failed, and then reports it.
    failed: Exception | None = None
    try:
        if evaluation:
            model.meta["evaluation"] = _evaluate(model.vectors, evaluation)
        if args.neighbours:
            _index(model.vectors, args.neighbours, args.neighbours_topn, args.neighbours_seconds, args.quiet)
    except (W2VError, CLIError) as exc:
        failed = exc
    save_model(out, model, overwrite=args.force)
    if args.checkpoint_dir:
        from model.checkpoint import remove_checkpoint

        remove_checkpoint(Path(args.checkpoint_dir))  # its run is over; a rerun starts afresh
    t = model.meta["training"]
    print(
        f"saved {out}: {len(model.vectors)} words x {cfg.vector_size} dims, "
        # The whole run's rate, reading the corpus and loading the kernels included: below the
        # progress bar's, which counts training alone.
        f"{t['words_per_sec']:.0f} words/s overall, final loss {t['final_loss']:.4f}, "
        f"{time.perf_counter() - start:.1f}s"
    )
    if "evaluation" in model.meta:
        _print_evaluation(model.meta["evaluation"])
    if failed is not None:
        raise CLIError(f"{failed} (the model is saved without it)")
    return 0


def _stdin_sentences() -> Iterator[list[str]]:
    """`w2v train -`: the corpus piped in, read and checked as a file would be (plain or
    compressed, UTF-8, bad bytes as U+FFFD)."""
    from model.corpus import DECOMPRESS_ERRORS, open_stream_text

    text = open_stream_text(sys.stdin.buffer)
    try:
        for line in text:
            yield line.split()
    except DECOMPRESS_ERRORS as exc:
        raise CorpusError(f"cannot read corpus <stdin>: {exc}") from exc


def _check_out(out: Path, force: bool) -> None:
    if (out.exists() or out.is_symlink()) and not force:
        raise CLIError(f"--out {out} already exists; pass --force to replace it")


def _index(vectors: Vectors, words: int, topn: int, seconds: float | None, quiet: bool) -> NeighbourTable:
    from model.neighbours import build_neighbours

    bar = None if quiet else IndexProgress()
    try:
        table = build_neighbours(vectors, k=topn, words=words, seconds=seconds, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if table is None:
        raise CLIError("nothing to index: a neighbour table needs at least two words")
    wanted = min(words, len(vectors))
    if table.n_words < wanted:
        print(
            f"w2v: the neighbour table holds the {table.n_words} most frequent words, not {wanted}: "
            f"its {seconds:g} s were up (the other words' queries search)",
            file=sys.stderr,
        )
    vectors.attach_neighbours(table)
    return table


def cmd_index(args: argparse.Namespace) -> int:
    from model.store import load_model, save_model

    start = time.perf_counter()
    model = load_model(args.model)
    table = _index(model.vectors, args.words, args.topn, args.seconds, args.quiet)
    # The directory is replaced in one step: readers see the old model or the indexed one.
    if not save_model(args.model, model, only_if_exists=True):
        raise CLIError(f"{args.model} was removed while it was being indexed; nothing written")
    print(
        f"indexed {args.model}: the {table.n_words} most frequent words, {table.k} neighbours each, "
        f"{time.perf_counter() - start:.1f}s"
    )
    return 0


def _read_evaluation_files(analogies: str | None, pairs: Sequence[str]) -> EvaluationFiles | None:
    from model.evaluation import read_analogies, read_word_pairs

    if not analogies and not pairs:
        return None
    # A pair file's delimiter is its own: tab, comma or spaces.
    return (read_analogies(analogies) if analogies else None), [read_word_pairs(p, delimiter=None) for p in pairs]


def _evaluate(
    vectors: Vectors,
    files: EvaluationFiles,
    *,
    restrict_vocab: int = 300_000,
    case_insensitive: bool = True,
    method: str = "add",
) -> dict[str, Any]:
    from model.evaluation import evaluate_analogies, evaluate_word_pairs

    analogies, pairs = files
    result: dict[str, Any] = {}
    if analogies is not None:
        a = evaluate_analogies(
            vectors,
            analogies,
            restrict_vocab=restrict_vocab,
            case_insensitive=case_insensitive,
            method=method,  # type: ignore[arg-type]
        )
        result["analogies"] = {"file": Path(analogies.path).name, **a.to_dict()}
    for read in pairs:
        scored = evaluate_word_pairs(vectors, read, restrict_vocab=restrict_vocab, case_insensitive=case_insensitive)
        result.setdefault("pairs", []).append({"file": Path(read.path).name, **scored.to_dict()})
    return result


def cmd_eval(args: argparse.Namespace) -> int:
    from model.store import load_model

    files = _read_evaluation_files(args.analogies, args.pairs or [])
    if files is None:
        raise CLIError("give --analogies FILE and/or --pairs FILE")
    model = load_model(args.model)
    result = _evaluate(
        model.vectors,
        files,
        restrict_vocab=args.restrict_vocab,
        case_insensitive=not args.case_sensitive,
        method=args.method,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_evaluation(result)
    return 0


def _print_evaluation(result: dict[str, Any]) -> None:
    if "analogies" in result:
        a = result["analogies"]
        print(f"analogies {a['file']}: accuracy {a['accuracy'] * 100:.2f}% ({a['correct']}/{a['total']}, "
              f"{a['skipped']} skipped)")
    for p in result.get("pairs", []):
        print(f"pairs {p['file']}: spearman {p['spearman']:.4f} pearson {p['pearson']:.4f} "
              f"({p['pairs']} pairs, {p['oov_ratio']:.1f}% oov)")


def _print_results(results: Sequence[tuple[str, float]]) -> None:
    for word, score in results:
        print(f"{score:.4f}\t{word}")


def cmd_similar(args: argparse.Namespace) -> int:
    from model.store import load_model

    model = load_model(args.model)
    positive, negative = model.query_words(args.words), model.query_words(args.negative or [])
    _print_results(model.vectors.most_similar(positive, negative=negative, topn=args.topn))
    return 0


def cmd_analogy(args: argparse.Namespace) -> int:
    from model.store import load_model

    model = load_model(args.model)
    a, b, c = model.query_words([args.a, args.b, args.c])
    _print_results(model.vectors.analogy(a, b, c, topn=args.topn, method=args.method))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from model.formats import save_word2vec_format
    from model.store import load_model

    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"--out {out} is a directory; give a file name")
    _check_out(out, args.force)
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: the folder {out.parent} does not exist")
    model = load_model(args.model)
    fmt = _export_format(out) if args.format == "auto" else args.format
    save_word2vec_format(model.vectors, out, binary=fmt == "word2vec-binary")
    print(f"wrote {args.out}: {len(model.vectors)} words ({fmt})")
    if model.vectors.subwords is not None:
        print("note: word2vec formats hold the vocabulary's vectors only; the n-gram rows that give unseen "
              "words a vector stay in the model directory")
    return 0


def _export_format(out: Path) -> str:
    """The format a file name asks for: text for .txt or .vec (compressed too), else binary."""
    suffixes = [s.lower() for s in out.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz"):
        suffixes.pop()
    return "word2vec-text" if suffixes and suffixes[-1] in (".txt", ".vec") else "word2vec-binary"


def cmd_import(args: argparse.Namespace) -> int:
    from model.formats import load_word2vec_format
    from model.store import Model, check_writable_target, save_model

    out = Path(args.out)
    _check_out(out, args.force)
    check_writable_target(out, overwrite=args.force)
    binary = {"auto": None, "word2vec-text": False, "word2vec-binary": True}[args.format]
    vectors = load_word2vec_format(args.file, binary=binary, limit=args.limit, unicode_errors=args.unicode_errors)
    save_model(out, Model(vectors, {"imported_from": Path(args.file).name}), overwrite=args.force)
    print(f"saved {out}: {len(vectors)} words x {vectors.vector_size} dims")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = TrainConfig()
    p = sub.add_parser("train", help="train a model on a text corpus (one sentence per line)")
    p.add_argument(
        "corpus", help="text file, one sentence per line; gzip, bzip2 or xz compressed too; - reads standard input"
    )
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--vector-size", type=int, default=d.vector_size)
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument("--negative", type=int, default=d.negative)
    p.add_argument("--ns-exponent", type=float, default=d.ns_exponent)
    p.add_argument("--min-count", type=int, default=d.min_count)
    p.add_argument("--max-vocab", type=_int_at_least(2), default=None)
    p.add_argument("--sample", type=float, default=d.sample)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--min-alpha", type=float, default=d.min_alpha)
    p.add_argument("--batch-size", type=int, default=None, help="words per unit of work (engine default)")
    p.add_argument("--threads", type=int, default=d.threads, help="0: one per core")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default=d.device)
    p.add_argument("--engine", choices=["auto", "hogwild", "minibatch"], default=d.engine)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--lowercase", action="store_true")
    p.add_argument(
        "--max-n",
        type=int,
        default=d.max_n,
        help="subwords, as fastText: learn from character n-grams of --min-n to --max-n characters too, so "
        "misspelt and unseen words get vectors (fastText uses 6; default 0: none)",
    )
    p.add_argument("--min-n", type=int, default=d.min_n, help=f"shortest character n-gram (default {d.min_n})")
    p.add_argument("--buckets", type=int, default=d.buckets, help=f"n-gram hash buckets (default {d.buckets})")
    p.add_argument("--checkpoint-dir", default=None, help="write per-epoch checkpoints here and resume from them")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="epochs between checkpoints")
    p.add_argument("--analogies", help="evaluate on this analogy file after training")
    p.add_argument("--pairs", action="append", help="evaluate on this word-pair file after training (repeatable)")
    p.add_argument(
        "--neighbours",
        type=_int_at_least(0),
        default=0,
        metavar="WORDS",
        help="save the exact neighbours of this many most frequent words with the model, so one-word "
        "queries are lookups (about one batched search per word; default 0: none)",
    )
    p.add_argument("--neighbours-topn", type=_positive_int, default=20, help="neighbours kept per word (default 20)")
    p.add_argument(
        "--neighbours-seconds",
        type=_positive_float,
        default=None,
        metavar="S",
        help="stop indexing after about S seconds, keeping the most frequent words done by then (default: no limit)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model on analogy and word-pair files")
    p.add_argument("model")
    p.add_argument("--analogies")
    p.add_argument("--pairs", action="append", help="word-pair file (tab, comma or space separated); repeatable")
    p.add_argument(
        "--restrict-vocab", type=_positive_int, default=300_000, help="only the most frequent N words (300000)"
    )
    p.add_argument("--case-sensitive", action="store_true", help="do not fold case (gensim folds it)")
    p.add_argument("--method", choices=["add", "mul"], default="add", help="analogies by 3CosAdd or 3CosMul")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("similar", help="nearest words to the sum of WORDs minus --negative words")
    p.add_argument("model")
    p.add_argument("words", nargs="+")
    p.add_argument("--negative", nargs="+", default=[])
    p.add_argument("--topn", type=_positive_int, default=10)
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("analogy", help="A is to B as C is to ?")
    p.add_argument("model")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("c")
    p.add_argument("--topn", type=_positive_int, default=10)
    p.add_argument("--method", choices=["add", "mul"], default="add")
    p.set_defaults(func=cmd_analogy)

    p = sub.add_parser("export", help="write a model in word2vec text or binary format")
    p.add_argument("model")
    p.add_argument(
        "--format",
        choices=["auto", "word2vec-text", "word2vec-binary"],
        default="auto",
        help="auto (default): text when --out ends in .txt or .vec (before any .gz, .bz2 or .xz), else binary",
    )
    p.add_argument("--out", required=True, help="file to write; .gz, .bz2 or .xz compresses it")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("index", help="add a neighbour table to a model directory, so one-word queries are lookups")
    p.add_argument("model")
    p.add_argument("--words", type=_positive_int, default=100_000, help="most frequent words to index (100000)")
    p.add_argument("--topn", type=_positive_int, default=20, help="neighbours kept per word (20)")
    p.add_argument(
        "--seconds",
        type=_positive_float,
        default=None,
        help="stop after about this many seconds, keeping the most frequent words done by then (default: no limit)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("import", help="turn a word2vec text or binary file into a model directory")
    p.add_argument("file")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["auto", "word2vec-text", "word2vec-binary"], default="auto")
    p.add_argument(
        "--limit", type=_positive_int, help="read only the first N vectors (the most frequent words), as gensim's limit"
    )
    p.add_argument(
        "--unicode-errors",
        choices=["strict", "replace", "ignore"],
        default="strict",
        help="words that are not valid UTF-8 (cut inside a character by word2vec.c): refuse the file (default), "
        "replace the bad bytes with U+FFFD, or drop them",
    )
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="w2v", description="word2vec CBOW embeddings: train, query, serve")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse and dispatch; shared with the service's `w2v` which adds serve/worker commands."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except (W2VError, CLIError, FileExistsError) as exc:
        print(f"w2v: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"w2v: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("w2v: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
