"""``dlaas classify``: upload files and folders as one job, follow it, print the labels;
or, given ``s3://`` or ``file://`` URLs, classify stored images where they are."""

from __future__ import annotations

import csv
import json
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dlaas.errors import ApiError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def collect_files(paths: Sequence[str]) -> list[Path]:
    """Files as given, plus the images found (recursively) in folders, in a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            raise ApiError(f"{raw}: no such file or folder")
    if not found:
        raise ApiError("no images found in the given paths")
    return found


def multipart_body(
    files: Sequence[Path],
    boundary: str,
    progress: Any = None,
    task: Any = None,
    model: str | None = None,
) -> Iterator[bytes]:
    """Stream a multipart body one file at a time, so a big folder never sits in memory;
    ``model`` goes first, as the form field that names the model."""
    if model:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
        ).encode()
    for path in files:
        name = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        yield path.read_bytes()
        yield b"\r\n"
        if progress is not None:
            progress.advance(task)
    yield f"--{boundary}--\r\n".encode()


def upload(
    client: httpx.Client,
    files: Sequence[Path],
    progress: Any = None,
    task: Any = None,
    model: str | None = None,
) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    response = client.post(
        "/v1/jobs?partial=true",
        content=multipart_body(files, boundary, progress, task, model),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    if response.status_code != 202:
        raise ApiError(_describe_error(response))
    return dict(response.json())


def follow(
    client: httpx.Client, job_id: str, progress: Any = None, task: Any = None
) -> list[dict[str, Any]]:
    """Read the job's event stream until its ``end`` event; return every result."""
    results: dict[str, dict[str, Any]] = {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        if response.status_code != 200:
            response.read()
            raise ApiError(_describe_error(response))
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "result":
                result = json.loads(line[5:])
                if result["image_id"] not in results and progress is not None:
                    progress.advance(task)
                results[result["image_id"]] = result
            elif line.startswith("data:") and event == "end":
                break
    return list(results.values())


def run_classify(
    paths: Sequence[str],
    *,
    url: str,
    output: str | None,
    timeout_s: float,
    api_key: str | None = None,
    wait: bool = True,
    model: str | None = None,
) -> int:
    """Upload, then follow the job to its end; with ``wait=False`` print its ID and return.
    ``model`` names the model (GET /v1/models); None: the service's default."""
    console = Console(stderr=True)
    if any(is_url(p) for p in paths):
        return run_source_job(
            paths, url=url, output=output, timeout_s=timeout_s, api_key=api_key, wait=wait
        )
    try:
        files = collect_files(paths)
        with (
            httpx.Client(
                base_url=url,
                timeout=httpx.Timeout(timeout_s, connect=10.0),
                headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
            ) as client,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=output is None,
            ) as progress,
        ):
            up = progress.add_task("uploading", total=len(files))
            job = upload(client, files, progress, up, model)
            if not wait:
                progress.stop()
                print(job["job_id"])
                console.print(
                    f"queued {len(job['images'])} images; dlaas jobs show {job['job_id']}"
                )
                return 0
            done = progress.add_task("classifying", total=len(job["images"]))
            results = follow(client, job["job_id"], progress, done)
    except (ApiError, httpx.HTTPError) as exc:
        console.print(f"[red]dlaas classify: {exc}[/red]")
        return 2
    return _report(job, results, output, console)


def _report(
    job: dict[str, Any], results: list[dict[str, Any]], output: str | None, console: Console
) -> int:
    """Results in upload order, refused files last, as a table or to ``output``; the exit
    code (1 if any image failed)."""
    order = {image["image_id"]: n for n, image in enumerate(job["images"])}
    results.sort(key=lambda r: order.get(r["image_id"], 0))
    for refused in job.get("rejected", []):
        results.append(
            {
                "image_id": "",
                "filename": refused["filename"],
                "status": "failed",
                "error": f"refused ({refused['status']}): {refused['detail']}",
                "predictions": [],
            }
        )
    if output:
        write_results(results, Path(output))
        console.print(f"wrote {len(results)} results to {output}")
    else:
        print_table(results, console=Console())
    failed = sum(1 for r in results if r["status"] != "done")
    if failed:
        console.print(f"[red]{failed} of {len(results)} images failed[/red]")
    return 1 if failed else 0


SOURCE_SCHEMES = ("s3://", "file://")
POLL_S = 1.0


def is_url(path: str) -> bool:
    return path.startswith(SOURCE_SCHEMES)


def run_source_job(
    paths: Sequence[str],
    *,
    url: str,
    output: str | None,
    timeout_s: float,
    api_key: str | None = None,
    wait: bool = True,
) -> int:
    """A job over stored images: a folder URL (ending in /) or a file of keys, written
    back as JSON Lines under ``output`` (a folder URL). The exit code is 1 if any failed."""
    console = Console(stderr=True)
    if len(paths) != 1 or output is None or not is_url(output):
        console.print(
            "[red]dlaas classify: give one s3:// or file:// source (a folder ending in /, or a"
            " file of keys) and --output s3://... or file://... (a folder)[/red]"
        )
        return 2
    source = paths[0]
    body = {"source" if source.endswith("/") else "manifest": source, "output": output}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    with httpx.Client(base_url=url, timeout=60.0, headers=headers) as client:
        try:
            response = client.post("/v1/jobs", json=body)
            if response.status_code != 202:
                raise ApiError(_describe_error(response))
            job_id = response.json()["job_id"]
            if not wait:
                print(job_id)
                return 0
            job = follow_source_job(client, job_id, timeout_s, console)
        except (ApiError, httpx.HTTPError) as exc:
            console.print(f"[red]dlaas classify: {exc}[/red]")
            return 2
    counts, listing = job["counts"], job["listing"]
    print(listing.get("output_url", ""))
    console.print(
        f"job {job_id} {job['status']}: {counts['done']} done, {counts['failed']} failed"
        f" of {counts['total']}; results in {listing.get('output_url')}"
    )
    if listing.get("error"):
        console.print(f"[red]the listing stopped early: {listing['error']}[/red]")
    return 1 if counts["failed"] or listing.get("error") else 0


def follow_source_job(
    client: httpx.Client, job_id: str, timeout_s: float, console: Console
) -> dict[str, Any]:
    """Poll the job's counts until its output is written; its last status."""
    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("listing", total=None)
        while True:
            response = client.get(f"/v1/jobs/{job_id}", params={"results": "false"})
            if response.status_code != 200:
                raise ApiError(_describe_error(response))
            job: dict[str, Any] = response.json()
            listing, counts = job.get("listing") or {}, job["counts"]
            phase = listing.get("phase", "listing")
            finished = counts.get("settled", counts["total"] - counts["queued"])
            progress.update(
                task,
                description="listing" if phase == "listing" else "classifying",
                total=counts["total"] if phase != "listing" else None,
                completed=finished,
            )
            if phase == "written":
                return job
            if time.monotonic() > deadline:
                raise ApiError(f"job {job_id} did not finish within {timeout_s:g} s; it runs on")
            time.sleep(POLL_S)


def print_table(results: Sequence[dict[str, Any]], console: Console) -> None:
    table = Table("file", "label", "score", "runner-up")
    for r in results:
        preds = r.get("predictions") or []
        if r["status"] != "done" or not preds:
            table.add_row(r.get("filename", ""), f"[red]failed: {r.get('error')}[/red]", "", "")
            continue
        second = f"{preds[1]['label']} ({preds[1]['score']:.2f})" if len(preds) > 1 else ""
        table.add_row(r.get("filename", ""), preds[0]["label"], f"{preds[0]['score']:.3f}", second)
    console.print(table)


def write_results(results: Sequence[dict[str, Any]], path: Path) -> None:
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(list(results), indent=2))
        return
    if path.suffix.lower() != ".csv":
        raise ApiError(f"--output must end in .csv or .json, not {path.suffix!r}")
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        header = ["filename", "image_id", "status", "error"]
        for k in range(1, 6):
            header += [f"label_{k}", f"score_{k}"]
        writer.writerow(header)
        for r in results:
            row = [r.get("filename", ""), r["image_id"], r["status"], r.get("error") or ""]
            for p in (r.get("predictions") or [])[:5]:
                row += [p["label"], f"{p['score']:.6f}"]
            writer.writerow(row)


def _describe_error(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"HTTP {response.status_code} {body.get('error')}: {body.get('detail')}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_classify(sys.argv[1:], url="http://127.0.0.1:8000", output=None, timeout_s=600))


class ClientSettings(BaseSettings):
    """What ``dlaas classify`` reads from the environment: the service's settings stay apart."""

    model_config = SettingsConfigDict(env_prefix="DLAAS_", extra="ignore", frozen=True)

    api_key: SecretStr | None = Field(
        None, description="the API key to send (as Authorization: Bearer)"
    )
