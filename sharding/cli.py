"""``ldisc-shard``: ingest hospital images into a dataset, verify it, print statistics.

    ldisc-shard ingest SRC --dataset DST --site NAME --modality fundus|xray [--workers N]
    ldisc-shard verify DST [--manifest-version N|latest]
    ldisc-shard stats DST [--manifest-version N|latest]
    ldisc-shard --version

The patient-key secret is read from $LDISC_PATIENT_KEY_SECRET or --secret-file only.
Exit codes: 0 ok, 1 verify found problems, 2 usage/configuration error.
"""

from __future__ import annotations

import argparse
import sys

from ldisc.cli_args import add_version, byte_size, format_byte_size
from ldisc.cli_errors import usage_error
from ldisc.data.store import open_store

from .deid import MIN_SECRET_BYTES, SECRET_ENV

INGEST_LOG = "logs"          # <dataset>/logs/ingest-v<version>.json: the run record of each ingest
SECRET_HELP = (f"Required secret: the patient-key HMAC secret (at least {MIN_SECRET_BYTES} bytes) is read from "
               f"${SECRET_ENV}, or from --secret-file; never from an argument. Ingest refuses to run without it.")


def _parser() -> argparse.ArgumentParser:
    p = add_version(argparse.ArgumentParser(prog="ldisc-shard", description=__doc__.split("\n")[0]))
    sub = p.add_subparsers(dest="command", required=True)
    ing = sub.add_parser("ingest", help="append a folder of PNG/JPEG/TIFF/DICOM files to a dataset",
                         description="Append a folder of PNG/JPEG/TIFF/DICOM files to a dataset. " + SECRET_HELP,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ing.add_argument("source", help="source folder")
    ing.add_argument("--dataset", required=True, help="dataset path or s3://bucket/prefix")
    ing.add_argument("--site", required=True, help="site name (part of the pseudonym and the shard path)")
    ing.add_argument("--modality", required=True, choices=["fundus", "xray"])
    ing.add_argument("--workers", type=int, default=1, help="decoding processes")
    ing.add_argument("--stored-side", type=int, default=512, help="side of the stored square images in px")
    ing.add_argument("--max-pixels", type=int, default=100_000_000, help="decompression-bomb limit")
    ing.add_argument("--shard-samples", type=int, default=1000, help="samples per shard at most")
    ing.add_argument("--shard-bytes", type=byte_size, default=format_byte_size(256 << 20),
                     help="bytes per shard at most: 512MB, 256MiB, 1GB or a number of bytes")
    ing.add_argument("--files-from", help="file listing source paths relative to SRC (instead of a walk)")
    ing.add_argument("--non-dicom-patient", choices=["file", "parent"], default="file",
                     help="what identifies the patient of a non-DICOM file: the file or its folder")
    ing.add_argument("--secret-file", help=f"file holding the patient-key HMAC secret (else ${SECRET_ENV})")
    ing.add_argument("--quarantine-report", help="JSONL report of skipped files (local path)")
    ing.add_argument("--staging-dir", help="local folder for the temporary spool")
    ing.add_argument("--metrics-file", help="write Prometheus metrics here at the end (textfile format)")
    ing.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    ing.add_argument("--no-progress", action="store_true")
    for name, text in (("verify", "re-check checksums and sample counts"),
                       ("stats", "counts per site/modality/version and size histograms")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("dataset")
        sp.add_argument("--manifest-version", default="latest",
                        help="the dataset's manifest version to read: a number or 'latest'")
    return p


def _ingest(args) -> int:
    from .deid import SecretMissing, load_secret
    from .ingest import IngestOptions, ingest, summary_lines
    from .metrics import IngestMetrics

    try:
        secret = load_secret(args.secret_file)
    except SecretMissing as e:
        usage_error("ldisc-shard", e)
    metrics = IngestMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    opts = IngestOptions(
        source=args.source, dataset=args.dataset, site=args.site, modality=args.modality,
        workers=args.workers, stored_side=args.stored_side, max_pixels=args.max_pixels,
        shard_samples=args.shard_samples, shard_bytes=args.shard_bytes,
        non_dicom_patient=args.non_dicom_patient, files_from=args.files_from,
        quarantine_report=args.quarantine_report, staging_dir=args.staging_dir,
        progress=not args.no_progress)
    try:
        result = ingest(opts, secret, metrics)
    except (ValueError, FileNotFoundError) as e:
        usage_error("ldisc-shard", e)
    finally:
        if args.metrics_file:
            metrics.write(args.metrics_file)
    from dataclasses import asdict

    from ldisc.runrecord import record_into_store

    record_into_store(open_store(args.dataset), f"{INGEST_LOG}/ingest-v{result.version:06d}.json", "ldisc-shard ingest",
                      {"result": asdict(result)})
    print("\n".join(summary_lines(result)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ingest":
        return _ingest(args)
    from .verify import stats_lines, verify

    from ldisc.data.manifest import list_versions

    store = open_store(args.dataset)
    versions = list_versions(store)
    if not versions:
        usage_error("ldisc-shard", f"{args.dataset}: no committed dataset there (no manifest version); check the path")
    wanted = args.manifest_version
    if wanted != "latest" and (not wanted.isdigit() or int(wanted) not in versions):
        usage_error("ldisc-shard", f"--manifest-version {wanted}: choose 'latest' or one of {versions}")
    version = wanted if wanted == "latest" else int(wanted)
    if args.command == "verify":
        problems, counts = verify(store, version)
        for line in problems:
            print(f"PROBLEM {line}")
        from . import leftovers

        for kind, items in leftovers.find(store).items():
            for item in items:
                print(f"LEFTOVER {kind} {item}  (removed by the next ingest)")
        print(f"verified version {counts['version']}: {counts['shards']} shards, {counts['samples']} samples, "
              f"{counts['unreferenced_shards']} unreferenced shard objects, {len(problems)} problems")
        return 1 if problems else 0
    print("\n".join(stats_lines(store, version)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
