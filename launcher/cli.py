"""``ldisc-launch``: the same Hydra config, run locally, on Kubernetes or on a Ray cluster.

    ldisc-launch pretrain|ingest|eval --target local|k8s|ray [--dry-run] [--out DIR] [--name NAME]
                 [--namespace NS] [--kubeconfig F] [--address http://HOST:8265] [key=value ...]
    ldisc-launch status|logs|delete NAME [--namespace NS] [--kubeconfig F] [--address http://HOST:8265]

``key=value`` overrides go to the launched entry point (``configs/pretrain.yaml``, ``configs/eval.yaml``);
``launch.*`` keys go to the ``configs/launch/`` group (nodes, GPUs, image, storage, ``launch.ingest.*``...).
``--target k8s --dry-run`` prints the YAML stream the cluster would get; ``--out DIR`` writes one file per
object; without either, the objects are created through ``launcher.kube``. ``status``/``logs``/``delete``
follow a Kubernetes launch by name, or a Ray job by submission id with ``--address``.
Exit status: the launched command's (local), 0 on success, 1 when the cluster refuses, 2 on bad usage.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from launcher.k8s.common import file_name, yaml_stream
from ldisc.cli_args import add_version

TARGETS = ("local", "k8s", "ray")


class UsageError(Exception):
    """Bad command line or config: one line on stderr, exit 2."""


def _parser() -> argparse.ArgumentParser:
    p = add_version(argparse.ArgumentParser(prog="ldisc-launch", description=__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    sub = p.add_subparsers(dest="command", required=True)
    for entry in ("pretrain", "ingest", "eval"):
        sp = sub.add_parser(entry, help=f"launch ldisc-{'shard ingest' if entry == 'ingest' else entry}")
        sp.add_argument("--target", choices=TARGETS, default="local")
        sp.add_argument("--dry-run", action="store_true", help="print what would run (k8s: the YAML stream)")
        sp.add_argument("--out", help="k8s: write one YAML file per object into this folder")
        sp.add_argument("--name", help="job name (same as launch.name)")
        sp.add_argument("--namespace", help="namespace (same as launch.namespace)")
        sp.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
        sp.add_argument("--address", help="ray: the dashboard URL http://HOST:8265 (same as launch.ray.address)")
        sp.add_argument("overrides", nargs="*", help="key=value overrides")
    for cmd, text in (("status", "conditions, pod phases, restarts, newest checkpoint"),
                      ("logs", "logs of the job's pods"), ("delete", "delete the job's objects")):
        sp = sub.add_parser(cmd, help=text)
        sp.add_argument("name")
        sp.add_argument("--namespace", default="ldisc")
        sp.add_argument("--kubeconfig")
        sp.add_argument("--address", help="a Ray job: the dashboard URL; NAME is the submission id")
        if cmd == "logs":
            sp.add_argument("--tail", type=int, default=None, help="last N lines of each pod")
            sp.add_argument("-f", "--follow", action="store_true")
    return p


def _launch(args):
    from launcher.k8s.render import compose_launch

    for o in args.overrides:
        if "=" not in o:
            raise UsageError(f"overrides are key=value, got {o!r}")
    try:
        return compose_launch(args.command, args.overrides, name=args.name, namespace=args.namespace)
    except Exception as e:      # Hydra's override/config errors → one line
        raise UsageError(" ".join(str(e).split())[:300]) from None


# ---------------------------------------------------------------------------------------------------
# --target local

def _local_command(ln) -> tuple[list[str] | None, dict | None]:
    """(argv, env) of a local launch; argv None: ingest, which runs in-process."""
    from launcher.local import TorchrunSpec, launch_env, torchrun_command

    if ln.entry == "pretrain":
        from ldisc.train.env import free_port

        spec = TorchrunSpec(nproc=int(ln.launch["procs_per_node"]), rdzv_endpoint=f"127.0.0.1:{free_port()}",
                            max_restarts=int(ln.launch["max_restarts"]))
        # as on Kubernetes: a restarted job continues from its newest complete checkpoint (an explicit
        # train.resume=… later on the command line wins)
        return torchrun_command(spec, ["train.resume=auto", *ln.overrides]), launch_env(ln.launch["local"]["threads"])
    if ln.entry == "eval":
        # the eval fleet starts Ray's own processes: glibc kept, not a preloaded allocator
        return [sys.executable, "-m", "ldisc.eval.cli", *ln.overrides], launch_env(ln.launch["local"]["threads"], "glibc")
    return None, None


def run_local(ln, dry_run: bool) -> int:
    argv, env = _local_command(ln)
    if argv is None:
        from launcher.k8s.ingest import ingest_args
        from sharding.cli import main as shard_main

        if ln.overrides:
            raise UsageError(f"ingest takes launch.ingest.* keys, not {ln.overrides[0]!r}")
        try:
            shard_args = ingest_args(ln.launch, ln.name)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if dry_run:
            print(shlex.join(["ldisc-shard", *shard_args]))
            return 0
        return shard_main(shard_args)
    if dry_run:
        print(shlex.join(argv))
        return 0
    return subprocess.call(argv, env=env)


# ---------------------------------------------------------------------------------------------------
# --target k8s

def render_k8s(ln) -> list[dict]:
    from launcher.k8s.render import environment_secrets, render
    from launcher.validate import semantic_problems

    try:
        objects = render(ln)
    except Exception as e:      # bad launch.* values (ValueError) or Hydra override errors → one line
        raise UsageError(" ".join(str(e).strip("'\"").split())[:300]) from None
    nodes = int(ln.launch["nodes"]) if ln.entry == "pretrain" else None
    problems = semantic_problems(objects, nodes=nodes, secret_values=environment_secrets())
    if problems:
        raise UsageError(f"rendered objects are unsafe: {problems[0]}")
    return objects


def run_k8s(ln, args) -> int:
    objects = render_k8s(ln)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for obj in objects:
            (out / file_name(obj)).write_text(yaml_stream([obj]))
        print(f"wrote {len(objects)} objects to {out}/", file=sys.stderr)
    if args.dry_run:
        sys.stdout.write(yaml_stream(objects))
    if args.out or args.dry_run:
        return 0
    from launcher import kube

    try:
        for line in kube.apply_objects(objects, ln.namespace, args.kubeconfig):
            print(line)
    except kube.KubeError as e:
        print(f"ldisc-launch: {e}", file=sys.stderr)
        return 1
    print(f"follow it: ldisc-launch status {ln.name} --namespace {ln.namespace}")
    return 0


# ---------------------------------------------------------------------------------------------------
# --target ray

def ray_entrypoint(ln) -> str:
    """The shell command the Ray cluster's head runs: ``ldisc-eval`` (joining that cluster) or an ingest."""
    if ln.entry == "eval":
        return shlex.join(["python", "-m", "ldisc.eval.cli", *ln.overrides, "ray.address=auto"])
    if ln.entry == "ingest":
        from launcher.k8s.ingest import ingest_args

        try:
            return shlex.join(["python", "-m", "sharding.cli", *ingest_args(ln.launch, ln.name)])
        except ValueError as e:
            raise UsageError(str(e)) from None
    raise UsageError("pretrain runs with --target local or k8s (torchrun), not on a Ray cluster")


def run_ray(ln, args) -> int:
    address = args.address or ln.launch["ray"]["address"]
    if not address:
        raise UsageError("--target ray needs --address http://HOST:8265 (or launch.ray.address)")
    entrypoint = ray_entrypoint(ln)
    runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1", "DS_BUILD_OPS": "0"}}
    if ln.launch["ray"].get("working_dir"):
        runtime_env["working_dir"] = str(ln.launch["ray"]["working_dir"])
    if args.dry_run:
        print(f"ray job submit --address {address} --submission-id {ln.name} -- {entrypoint}")
        return 0
    from launcher import rayjobs

    try:
        job_id = rayjobs.submit(address, entrypoint, runtime_env, submission_id=ln.name)
        print(f"submitted {job_id}: {rayjobs.status(address, job_id)}")
    except rayjobs.RayJobError as e:
        print(f"ldisc-launch: {e}", file=sys.stderr)
        return 1
    print(f"follow it: ldisc-launch status {job_id} --address {address}")
    return 0


# ---------------------------------------------------------------------------------------------------
# status | logs | delete

def follow(args) -> int:
    if args.address:
        from launcher import rayjobs

        if args.command == "delete":
            raise UsageError("delete works on Kubernetes launches; stop a Ray job with `ray job stop`")
        try:
            print(rayjobs.status(args.address, args.name) if args.command == "status"
                  else rayjobs.logs(args.address, args.name), end="\n" if args.command == "status" else "")
        except rayjobs.RayJobError as e:
            print(f"ldisc-launch: {e}", file=sys.stderr)
            return 1
        return 0
    from launcher import kube

    try:
        if args.command == "status":
            print(kube.job_status(args.name, args.namespace, args.kubeconfig).render())
        elif args.command == "logs":
            for line in kube.job_logs(args.name, args.namespace, args.kubeconfig, args.tail, args.follow):
                print(line, flush=True)
        else:
            for line in kube.delete_job(args.name, args.namespace, args.kubeconfig):
                print(line)
    except kube.KubeError as e:
        print(f"ldisc-launch: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("status", "logs", "delete"):
            return follow(args)
        ln = _launch(args)
        if args.out and args.target != "k8s":
            raise UsageError("--out writes Kubernetes objects; use it with --target k8s")
        if args.target == "local":
            return run_local(ln, args.dry_run)
        if args.target == "k8s":
            return run_k8s(ln, args)
        return run_ray(ln, args)
    except UsageError as e:
        print(f"ldisc-launch: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
