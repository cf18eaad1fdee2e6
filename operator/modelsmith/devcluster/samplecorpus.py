"""The local chain's data: real English text that every machine has, and a chat set from it.

No dataset can be downloaded here, and a made-up corpus teaches nothing worth asking
about. The docstrings of Python's standard library are real prose (written by people,
about things a user can ask about), ship with every Python, and come with the kind of
duplication a crawl has: inherited and copied docstrings repeat word for word or
nearly. The corpus is one document per docstring; the chat set asks what a function
does and answers with the first sentence of its docstring, so the fine-tuned model can
be asked the same at its endpoint.

The same Python gives the same corpus (modules in a fixed order, members sorted).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelsmith.devcluster import nodestorage
from modelsmith.devcluster.cluster import DevCluster

MODULES = (  # noqa: SIM905 (one string reads better than 65 lines of names)
    "abc argparse base64 bisect calendar collections contextlib copy csv dataclasses "
    "datetime decimal difflib email.message enum fnmatch fractions functools getopt glob "
    "gzip hashlib heapq hmac html http.client inspect io ipaddress itertools json logging "
    "mimetypes operator os os.path pathlib pickle pprint queue random re secrets shlex "
    "shutil socket statistics string struct subprocess tarfile tempfile textwrap "
    "threading time timeit tokenize traceback typing unittest urllib.parse uuid warnings "
    "zipfile zlib"
).split()
MIN_CHARS = 40


def _members(module: Any) -> Iterator[tuple[str, Any]]:
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isroutine(value):
            yield f"{module.__name__}.{name}", value
            if inspect.isclass(value):
                for attr in sorted(vars(value)):
                    method = inspect.getattr_static(value, attr)
                    if not attr.startswith("_") and inspect.isroutine(method):
                        yield f"{module.__name__}.{name}.{attr}", method


def docstrings() -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) for the modules and their public members."""
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a Python built without one (zlib, say)
            continue
        if module.__doc__:
            yield module_name, inspect.cleandoc(module.__doc__)
        for name, value in _members(module):
            doc = inspect.getdoc(value)
            if doc:
                yield name, doc


def corpus() -> list[str]:
    """One document per docstring, duplicates kept: removing them is the pipeline's job."""
    return [doc for _, doc in docstrings() if len(doc) >= MIN_CHARS]


def _first_sentence(doc: str) -> str | None:
    paragraph = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    match = re.match(r"(.{20,200}?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else None


def chat_set() -> list[dict[str, Any]]:
    """'What does NAME do?' answered by the first sentence of its docstring; one per
    answer (a copied docstring would otherwise teach the same answer many times)."""
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, doc in docstrings():
        answer = _first_sentence(doc)
        if "." not in name or answer is None or answer in seen:
            continue
        seen.add(answer)
        records.append(
            {
                "messages": [
                    {"role": "user", "content": f"What does {name} do?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return records


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def upload(cluster_home: Path, bucket: str) -> dict[str, int]:
    """Both files into ``bucket`` of the dev object store (made if missing), as a user
    would copy theirs with `aws s3 cp`; returns the records written per key."""
    import boto3  # type: ignore[import-untyped]  # the dev extra's (moto's)

    env = nodestorage.s3_env(cluster_home, nodestorage.host_endpoint())
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    files = {
        "raw/corpus.jsonl": [{"text": text} for text in corpus()],
        "chat/train.jsonl": chat_set(),
    }
    for key, records in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=jsonl(records))
    return {key: len(records) for key, records in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("print", help="print one of the two jsonl files")
    show.add_argument("what", choices=["corpus", "chat"])
    send = sub.add_parser("upload", help="put both into a bucket of the dev object store")
    send.add_argument("bucket")
    sub.add_parser("pod-env", help="the AWS_* variables pods need, as KEY=VALUE lines")
    args = parser.parse_args(argv)
    home = DevCluster.from_env().home
    if args.command == "print":
        records = [{"text": t} for t in corpus()] if args.what == "corpus" else chat_set()
        sys.stdout.buffer.write(jsonl(records))
    elif args.command == "upload":
        for key, count in upload(home, args.bucket).items():
            print(f"s3://{args.bucket}/{key}: {count} records")
    else:
        env = nodestorage.s3_env(home, nodestorage.pod_endpoint())
        sys.stdout.write("".join(f"{key}={value}\n" for key, value in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
