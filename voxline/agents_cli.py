"""`voxline agents`: the `/v1/agents` API from the command line. TOML files are the import
format: `apply -f DIR` creates every agent of DIR that does not exist and updates the
ones that differ, like `kubectl apply`, printing `created`, `updated` or `unchanged`.

The key (`VOXLINE_API_KEY` or `--api-key`) needs the `admin` scope to write; on a loopback
`make run` the API needs none."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import msgspec

TIMEOUT_S = 10.0


class ApiError(Exception):
    pass


class AgentsClient:
    def __init__(self, url: str, api_key: str = "") -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=TIMEOUT_S)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200,)) -> Any:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if response.status_code not in ok:
            raise ApiError(f"{method} {path}: {response.status_code} {_message(response)}")
        return response.json() if response.content else None

    def get(self, agent_id: str) -> dict[str, Any] | None:
        try:
            response = self.http.get(f"/v1/agents/{agent_id}")
        except httpx.HTTPError as exc:
            raise ApiError(f"GET /v1/agents/{agent_id}: {type(exc).__name__}: {exc}") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ApiError(f"GET /v1/agents/{agent_id}: {response.status_code} {_message(response)}")
        found: dict[str, Any] = response.json()
        return found


def _message(response: httpx.Response) -> str:
    try:
        err = response.json()["error"]
        field = f" (field {err['field']})" if err.get("field") else ""
        return f"{err['message']}{field}"
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def apply_dir(client: AgentsClient, directory: Path) -> list[tuple[str, str]]:
    """(agent id, what happened) for every `*.toml` of `directory`, in name order."""
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ApiError(f"no *.toml files in {directory}")
    done = []
    for path in files:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ApiError(f"{path}: {exc}") from None
        agent_id = doc.setdefault("id", path.stem)  # as the store reads it: the file's name is the id
        existing = client.get(agent_id)
        if existing is None:
            client.call("POST", "/v1/agents", doc, ok=(201,))
            done.append((agent_id, "created"))
            continue
        if _same(existing, doc):
            done.append((agent_id, "unchanged"))
            continue
        client.call("PUT", f"/v1/agents/{agent_id}", doc)
        done.append((agent_id, "updated"))
    return done


def _same(stored: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Would a PUT of the file change nothing: the file with every default filled in (a
    PUT resets what the file leaves out) equals the stored agent. A file this side cannot
    read as an agent is sent anyway, for the API's 422 to name the field."""
    from voxline.agents import Agent

    try:
        wanted = msgspec.to_builtins(msgspec.convert(doc, Agent))
    except (msgspec.ValidationError, ValueError):
        return False
    return bool(wanted == {k: v for k, v in stored.items() if k != "version"})


def run(args: argparse.Namespace) -> int:
    client = AgentsClient(args.url, args.api_key or "")
    try:
        if args.agents_command == "apply":
            for agent_id, what in apply_dir(client, Path(args.file)):
                print(f"agent/{agent_id} {what}")
        elif args.agents_command == "list":
            for agent in client.call("GET", "/v1/agents")["agents"]:
                print(f"{agent['id']:<24} v{agent['version']:<6} {agent['name']}")
        elif args.agents_command == "get":
            found = client.get(args.id)
            if found is None:
                raise ApiError(f"no agent {args.id!r}")
            print(json.dumps(found, indent=2))
        elif args.agents_command == "delete":
            client.call("DELETE", f"/v1/agents/{args.id}", ok=(204,))
            print(f"agent/{args.id} deleted")
    except ApiError as exc:
        print(f"voxline agents: {exc}", file=sys.stderr)
        return 1
    return 0


def add_arguments(agents: argparse.ArgumentParser) -> None:
    agents.add_argument("--url", default=os.environ.get("VOXLINE_GATEWAY_URL", "http://127.0.0.1:8080"))
    agents.add_argument("--api-key", default=os.environ.get("VOXLINE_API_KEY", ""), help="default VOXLINE_API_KEY")
    sub = agents.add_subparsers(dest="agents_command", required=True)
    apply = sub.add_parser("apply", help="create or update every agent TOML of a directory")
    apply.add_argument("-f", "--file", required=True, metavar="DIR", help="directory of agent TOML files")
    sub.add_parser("list", help="id, version and name of every agent")
    get = sub.add_parser("get", help="an agent as JSON, with its version")
    get.add_argument("id")
    delete = sub.add_parser("delete", help="delete an agent (calls running it go on)")
    delete.add_argument("id")
    agents.set_defaults(func=run)
