"""``dlaas jobs list|show|cancel|delete``: manage the jobs of a running service."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def add_jobs_parser(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="list, show, cancel or delete jobs on a running service")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="your jobs, newest first")
    listing.add_argument("--limit", type=int, default=20, help="jobs per page (1-100)")
    listing.add_argument("--all", action="store_true", help="every page, down to the oldest")
    show = actions.add_parser("show", help="a job's status, counts and results")
    show.add_argument("--output", default=None, help="write results to a .csv or .json file")
    cancel = actions.add_parser(
        "cancel", help="stop a job: images not yet classified never are; results stay"
    )
    delete = actions.add_parser(
        "delete", help="cancel a job and remove its inputs, results and manifest"
    )
    for parser in (show, cancel, delete):
        parser.add_argument("job_id", metavar="JOB_ID")
    for parser in (listing, show, cancel, delete):
        parser.add_argument("--url", default=DEFAULT_URL, help="the service's base URL")
        parser.add_argument("--json", action="store_true", help="print the API's JSON as is")
        parser.add_argument(
            "--api-key",
            default=None,
            help="the key to send, when the service needs one [env DLAAS_API_KEY]",
        )


def run_jobs(args: argparse.Namespace, api_key: str | None) -> int:
    """Run one ``dlaas jobs`` action; 0 on success, 2 when the service refused it."""
    import httpx
    from rich.console import Console

    from dlaas.client import _describe_error, print_table, write_results

    console = Console()
    errors = Console(stderr=True)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    with httpx.Client(base_url=args.url, timeout=60.0, headers=headers) as client:
        try:
            if args.jobs_command == "list":
                return _list(client, args, console)
            if args.jobs_command == "show":
                response = client.get(f"/v1/jobs/{args.job_id}")
            elif args.jobs_command == "cancel":
                response = client.post(f"/v1/jobs/{args.job_id}/cancel")
            else:
                response = client.delete(f"/v1/jobs/{args.job_id}", params={"purge": "true"})
        except httpx.HTTPError as exc:
            errors.print(f"[red]dlaas jobs: {exc}[/red]")
            return 2
        if response.status_code >= 400:
            errors.print(f"[red]dlaas jobs {args.jobs_command}: {_describe_error(response)}[/red]")
            return 2
        body = response.json()
        if args.json:
            print(json.dumps(body, indent=2))
            return 0
        if args.jobs_command == "delete":
            console.print(f"deleted job {body['job_id']}")
        else:
            console.print(f"job {body['job_id']}: {body['status']} ({_counts(body['counts'])})")
        if args.jobs_command == "show":
            if args.output:
                write_results(body["results"], _path(args.output))
            else:
                print_table(body["results"], console=console)
        return 0


def _list(client: Any, args: argparse.Namespace, console: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    from dlaas.client import _describe_error

    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": args.limit}
        if cursor:
            params["cursor"] = cursor
        response = client.get("/v1/jobs", params=params)
        if response.status_code >= 400:
            Console(stderr=True).print(f"[red]dlaas jobs list: {_describe_error(response)}[/red]")
            return 2
        page = response.json()
        rows += page["jobs"]
        cursor = page["next_cursor"]
        if not cursor or not args.all:
            break
    if args.json:
        print(json.dumps({"jobs": rows, "next_cursor": cursor}, indent=2))
        return 0
    table = Table("job", "created (UTC)", "status", "images")
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created_at"]))
        table.add_row(row["job_id"], created, row["status"], _counts(row["counts"]))
    console.print(table)
    if cursor:
        console.print(f"more: dlaas jobs list --all, or ?cursor={cursor}")
    return 0


def _counts(counts: dict[str, int]) -> str:
    parts = [f"{counts['done']}/{counts['total']} done"]
    for name in ("failed", "queued", "cancelled"):
        if counts.get(name):
            parts.append(f"{counts[name]} {name}")
    return ", ".join(parts)


def _path(value: str) -> Any:
    from pathlib import Path

    return Path(value)
