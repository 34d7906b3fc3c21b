"""`music-gen submit`: jobs on a Ray cluster."""

from __future__ import annotations

import argparse
import sys

JOB_ACTIONS = ("status", "logs", "stop")


def add_submit(sub: argparse._SubParsersAction) -> None:
    """`music-gen submit [--address URL] -- COMMAND` and `music-gen submit status|logs|stop JOB`."""
    p = sub.add_parser(
        "submit",
        help="run a music-gen command on a Ray cluster as a Ray Job",
        usage="music-gen submit [options] -- COMMAND [ARGS...]\n"
        "       music-gen submit [--address URL] status|logs|stop JOB",
        description="Submit any music-gen command as a Ray Job (the current folder travels "
        "as the job's working_dir, with the music_gen package) and print the job id; or check, read or stop a job. The "
        "cluster is --address, else RAY_ADDRESS, else a local `ray start` cluster; its token "
        "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is sent when found.",
    )
    p.add_argument("words", nargs="*", metavar="COMMAND", help="after --: the music-gen command")
    p.add_argument("--address", help="dashboard URL (http://head:8265) or head:6379")
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="stream logs until the job ends; exit 0 if it succeeded",
    )
    p.add_argument(
        "--working-dir", help="folder uploaded as the job's working dir (default: this one)"
    )
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job env var")
    p.add_argument("--submission-id", help="job id to use (default: generated)")
    p.set_defaults(run=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    from music_gen.errors import UsageError
    from music_gen.platform import jobs

    words = args.words
    if words and words[0] in JOB_ACTIONS:
        if len(words) != 2:
            raise UsageError(f"usage: music-gen submit {words[0]} JOB")
        return _job_action(jobs, words[0], words[1], args)
    env = jobs.parse_env(args.env)
    jobs.entrypoint(words)  # an empty command fails before connecting
    upload = jobs.plan_upload(args.working_dir)
    jobs.check_paths(words, upload)
    client = jobs.connect(args.address)
    print(upload.describe(), file=sys.stderr)
    job_id = jobs.submit(client, words, env=env, submission_id=args.submission_id, upload=upload)
    print(job_id, flush=True)
    if not args.follow:
        return 0
    return _finish(jobs, job_id, jobs.follow(client, job_id))


def _job_action(jobs, action: str, job_id: str, args: argparse.Namespace) -> int:
    client = jobs.connect(args.address)
    if action == "status":
        status, message = jobs.job_status(client, job_id)
        print(status + (f": {message}" if message else ""))
        return 0
    if action == "logs":
        if args.follow:
            return _finish(jobs, job_id, jobs.follow(client, job_id))
        print(jobs.job_logs(client, job_id), end="")
        return 0
    stopped = jobs.stop_job(client, job_id)
    print(f"stop requested for {job_id}" if stopped else f"{job_id} was not running")
    return 0


def _finish(jobs, job_id: str, status: str) -> int:
    print(f"music-gen: job {job_id} {status}", file=sys.stderr)
    return jobs.exit_code(status)
