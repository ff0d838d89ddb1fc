"""``alignloop feedback ...``: manage the human feedback service from the command line.

``migrate`` and ``admin create`` work on the database directly (there is no admin yet to call
the API with); every other command talks to a running service (``--server``, ``--token`` or
$ALIGNLOOP_FEEDBACK_URL / $ALIGNLOOP_FEEDBACK_TOKEN) through :class:`FeedbackClient`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from alignloop.cli.serve import feedback_config
from alignloop.data.jsonl import write_jsonl
from alignloop.errors import AlignloopError

SERVER = typer.Option("http://127.0.0.1:8000", "--server", envvar="ALIGNLOOP_FEEDBACK_URL", help="Service URL.")
TOKEN = typer.Option(None, "--token", envvar="ALIGNLOOP_FEEDBACK_TOKEN", help="An admin's API or session token.")
CONFIG = typer.Option(None, "--config", help="YAML with the feedback stage (or a whole loop config).")
DB = typer.Option(None, "--db", help="Database URL (default: feedback.database_url).")
ITEM_KEYS = {"prompt_id", "prompt", "completions", "sources", "category", "user_id", "key", "gold"}


def _client(server: str, token: str | None):
    from alignloop.feedback.client import FeedbackClient

    if not token:
        raise AlignloopError(
            "no admin token", "pass --token or set ALIGNLOOP_FEEDBACK_TOKEN (alignloop feedback admin create)"
        )
    return FeedbackClient(server, token)


def _wait_for(server: str, seconds: float) -> None:
    """Poll the service's /healthz until it answers (``alignloop serve ... &`` takes a few seconds)."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{server.rstrip('/')}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AlignloopError(
                f"the feedback service at {server} did not answer within {seconds:g} s", "is it running?"
            )
        time.sleep(0.25)


def _campaign_id(client: Any, ref: str) -> int:
    for c in client.campaigns():
        if c["name"] == ref or str(c["id"]) == ref:
            return c["id"]
    raise AlignloopError(f"no campaign {ref!r} on the service", "see `alignloop feedback status`")


def item_from_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """An upload item from a JSONL row: an item, a Prompt record (id/text) or a Ranking (its completions)."""
    if not isinstance(row, dict):
        raise AlignloopError(f"{where}: expected a JSON object")
    if "text" in row and "id" in row:  # a Prompt record: a prompt without completions (demonstrations)
        row = {
            "prompt_id": row["id"],
            "prompt": row["text"],
            "category": row.get("category", "other"),
            "user_id": row.get("user_id", ""),
        }
    item = {k: v for k, v in row.items() if k in ITEM_KEYS}
    for key in ("prompt_id", "prompt"):
        if not isinstance(item.get(key), str):
            raise AlignloopError(f"{where}: field '{key}' is required (a string)")
    return item


def _read_items(path: Path) -> list[dict[str, Any]]:
    from alignloop.data.jsonl import iter_json_lines

    items = [item_from_row(row, where) for where, row in iter_json_lines(path)]
    if not items:
        raise AlignloopError(f"{path} holds no items", "one JSON object per line: prompt_id, prompt, completions")
    return items


PASSWORD_FILE = typer.Option(None, "--password-file", help="Read the password from the first line of this file.")
ASK_PASSWORD = typer.Option(False, "--ask-password", help="Prompt for the password (hidden, asked twice).")
PASSWORD = typer.Option(
    None, "--password", help="The password itself (lands in shell history: prefer --ask-password or --password-file)."
)


def _ask_password() -> str:
    """Prompt twice on a terminal; otherwise read exactly one line of standard input, byte by byte, so
    a script can feed several commands their passwords from one stream (Python's buffered stdin would
    swallow the next command's line)."""
    import os
    import sys

    if sys.stdin is not None and sys.stdin.isatty():
        return typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's stream): read a line
        text = sys.stdin.readline().rstrip("\r\n") if sys.stdin is not None else ""
    else:
        line = bytearray()
        while (ch := os.read(fd, 1)) not in (b"", b"\n"):
            line += ch
        text = line.decode("utf-8").rstrip("\r")
    if not text:
        raise AlignloopError("--ask-password: no password on standard input", "type it at a terminal, or pipe one line")
    return text


def read_password(password: str | None, password_file: Path | None, ask: bool) -> str | None:
    """The password from exactly one of --password, --password-file, --ask-password (or None)."""
    given = [
        name for name, v in (("--password", password), ("--password-file", password_file), ("--ask-password", ask)) if v
    ]
    if len(given) > 1:
        raise AlignloopError(f"give one of {', '.join(given)}", "they are three ways to give the same password")
    if password_file is not None:
        if not password_file.exists():
            raise AlignloopError(f"{password_file}: no such file", "write the password on its first line")
        lines = password_file.read_text(encoding="utf-8").splitlines()
        password = lines[0] if lines else ""
        if not password:
            raise AlignloopError(f"{password_file}: the first line is empty", "write the password on its first line")
    elif ask:
        password = _ask_password()
    elif password is not None:
        typer.secho(
            "note: a password on the command line lands in your shell history; "
            "use --ask-password or --password-file next time",
            fg=typer.colors.YELLOW,
            err=True,
        )
    if password is not None and len(password) < 8:
        raise AlignloopError("password: at least 8 characters", "choose a longer one")
    return password


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Manage the human feedback service: admins, campaigns, screening, exports.", no_args_is_help=True
    )
    admin = typer.Typer(help="Create admins (directly in the database).", no_args_is_help=True)
    users = typer.Typer(help="Labelers and groups (through the API).", no_args_is_help=True)
    group.add_typer(admin, name="admin")
    group.add_typer(users, name="user")
    console = Console()

    @group.command("migrate")
    def migrate_cmd(config: Path = CONFIG, db: str = DB) -> None:
        """Create or upgrade the service's tables (alignloop serve also does this on start)."""
        from alignloop.feedback.db import migrate

        cfg = feedback_config(config, db)
        typer.echo(f"feedback database at schema revision {migrate(cfg.database_url)}")

    @admin.command("create")
    def admin_create(
        username: str = typer.Argument(..., help="The admin's user name."),
        password: str = PASSWORD,
        password_file: Path = PASSWORD_FILE,
        ask_password: bool = ASK_PASSWORD,
        token_file: Path = typer.Option(
            None, "--token-file", help="Write the API token to this file (mode 600) instead of printing it."
        ),
        config: Path = CONFIG,
        db: str = DB,
    ) -> None:
        """Make an admin (the first one too) and print how to log in: an API token always, web login with a password."""
        from alignloop.feedback.accounts import create_admin
        from alignloop.feedback.db import migrate

        password = read_password(password, password_file, ask_password)
        cfg = feedback_config(config, db)
        migrate(cfg.database_url)
        new = create_admin(cfg.database_url, username, password, token=True)
        url = f"http://{cfg.host}:{cfg.port}"
        typer.echo(f"admin {new.username!r} created in {cfg.database_url}")
        if token_file is not None:
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.write_text(f"{new.token}\n", encoding="utf-8")
            token_file.chmod(0o600)
            typer.echo(
                f"  API token written to {token_file}; use it: export ALIGNLOOP_FEEDBACK_TOKEN=$(cat {token_file})"
            )
        else:
            typer.echo(f"  API token (shown once): {new.token}")
            typer.echo(f"  use it: export ALIGNLOOP_FEEDBACK_TOKEN={new.token}")
        if password:
            typer.echo(f"  web console: log in at {url}/login as {new.username} with your password")
        else:
            typer.echo("  no password given: no web login for this admin (add one: --ask-password when creating)")
        typer.echo(f"  start the service on this database: alignloop serve --db {cfg.database_url}")

    @users.command("create")
    def user_create(
        username: str = typer.Argument(...),
        role: str = typer.Option("labeler", "--role", help="labeler or admin."),
        group_name: str = typer.Option(None, "--group", help="Labeler group (create it with `user group`)."),
        password: str = PASSWORD,
        password_file: Path = PASSWORD_FILE,
        ask_password: bool = ASK_PASSWORD,
        with_token: bool = typer.Option(False, "--with-token", help="Also create an API token (printed once)."),
        server: str = SERVER,
        token: str = TOKEN,
    ) -> None:
        """Create a labeler (or another admin); a password lets them log in to the labeling pages."""
        password = read_password(password, password_file, ask_password)
        out = _client(server, token).create_user(username, role, password, group_name, with_token)
        typer.echo(
            f"{out['role']} {out['username']!r} created" + (f"; API token: {out['token']}" if "token" in out else "")
        )

    @users.command("group")
    def group_create(
        name: str = typer.Argument(...),
        held_out: bool = typer.Option(False, "--held-out", help="Its labels stay out of training exports."),
        server: str = SERVER,
        token: str = TOKEN,
    ) -> None:
        """Create a labeler group."""
        g = _client(server, token).create_group(name, held_out)
        typer.echo(f"group {g['name']!r} created" + (" (held out)" if g["held_out"] else ""))

    @group.command("push")
    def push(
        file: Path = typer.Argument(..., help="JSONL: prompt_id, prompt, completions[, sources, category, gold]."),
        campaign: str = typer.Option(..., "--campaign", help="Campaign name (created if new)."),
        task_type: str = typer.Option(
            "ranking", "--task-type", help="demonstration, ranking, best_pick, thumbs, rating or rule_violations."
        ),
        guidelines: str = typer.Option(None, "--guidelines", help="Guidelines text shown with every task."),
        guidelines_file: Path = typer.Option(None, "--guidelines-file", help="Read the guidelines from a file."),
        overlap: int = typer.Option(1, "--overlap", min=1, help="Labelers per item."),
        allow_ties: bool = typer.Option(False, "--allow-ties", help="Rankings may contain ties."),
        rules: list[str] = typer.Option(None, "--rule", help="A written rule (rule_violations; repeat)."),
        screening: bool = typer.Option(False, "--screening", help="A gold set for screening labelers."),
        screened_only: bool = typer.Option(False, "--screened-only", help="Only labelers who passed screening."),
        rate_completions: bool = typer.Option(
            False, "--rate-completions", help="Labelers rate every completion (Likert + flags) before ranking."
        ),
        assign: bool = typer.Option(True, "--assign/--no-assign", help="Assign the items right away."),
        groups: list[str] = typer.Option(None, "--group", help="Assign only to these labeler groups (repeat)."),
        server: str = SERVER,
        token: str = TOKEN,
    ) -> None:
        """Upload prompts and model completions as a campaign and assign them to labelers."""
        client = _client(server, token)
        items = _read_items(file)
        existing = {c["name"]: c for c in client.campaigns()}
        if campaign in existing:
            cid = existing[campaign]["id"]
        else:
            text = guidelines_file.read_text(encoding="utf-8") if guidelines_file else guidelines
            if not text:
                raise AlignloopError("a new campaign needs guidelines", "pass --guidelines TEXT or --guidelines-file")
            up = client.create_campaign(
                campaign,
                task_type,
                text,
                overlap=overlap,
                allow_ties=allow_ties,
                rules=list(rules or []),
                screening=screening,
                screened_only=screened_only,
                **({"rate_completions": True} if rate_completions else {}),
                items=items,  # one transaction: a rejected item leaves no empty campaign behind
            )
            cid = up["id"]
        if campaign in existing:
            up = client.upload_items(cid, items)
        typer.echo(f"campaign {campaign!r} (id {cid}): {up['created']} new items, {up['existing']} already there")
        if assign:
            out = client.assign(cid, overlap=overlap, groups=list(groups) if groups else None)
            typer.echo(
                f"assigned {out['created']} tasks to {len(out['per_labeler'])} labelers (overlap {out['overlap']})"
            )
            if out["short"]:
                typer.echo(f"  {len(out['short'])} items are short of labelers: add labelers and run assign again")

    @group.command("assign")
    def assign_cmd(
        campaign: str = typer.Argument(...),
        overlap: int = typer.Option(None, "--overlap", min=1),
        groups: list[str] = typer.Option(None, "--group"),
        server: str = SERVER,
        token: str = TOKEN,
    ) -> None:
        """Assign (more of) a campaign's items so each has --overlap labelers."""
        client = _client(server, token)
        out = client.assign(_campaign_id(client, campaign), overlap, list(groups) if groups else None)
        typer.echo(f"assigned {out['created']} tasks; {len(out['short'])} items short of labelers")

    @group.command("screen")
    def screen_cmd(
        campaign: str = typer.Argument(..., help="The screening (gold) campaign."),
        threshold: float = typer.Option(None, "--threshold", help="Default: feedback.screening_threshold."),
        server: str = SERVER,
        token: str = TOKEN,
    ) -> None:
        """Score labelers against the gold set; those above the threshold get real tasks."""
        client = _client(server, token)
        out = client.screen(_campaign_id(client, campaign), threshold)
        table = Table(
            "labeler", "agreement with gold", "gold judgments", "qualified", title=f"threshold {out['threshold']}"
        )
        for r in out["labelers"]:
            table.add_row(r["labeler"], _pct(r["gold_agreement"]), str(r["n_gold"]), "yes" if r["qualified"] else "no")
        console.print(table)

    @group.command("status")
    def status(
        server: str = SERVER,
        token: str = TOKEN,
        wait: float = typer.Option(0, "--wait", help="Wait up to this many seconds for the service to answer."),
    ) -> None:
        """Campaigns and their progress (--wait: first wait for a service that is starting)."""
        if wait > 0:
            _wait_for(server, wait)
        table = Table("id", "campaign", "form", "items", "pending", "done", "skipped")
        for c in _client(server, token).campaigns():
            a = c["assignments"]
            table.add_row(
                str(c["id"]),
                c["name"],
                c["task_type"],
                str(c["n_items"]),
                *(str(a.get(k, 0)) for k in ("pending", "done", "skipped")),
            )
        console.print(table)

    @group.command("agreement")
    def agreement_cmd(campaign: str = typer.Argument(...), server: str = SERVER, token: str = TOKEN) -> None:
        """Inter-annotator agreement of a campaign and the per-labeler table (outliers flagged)."""
        client = _client(server, token)
        ag = client.agreement(_campaign_id(client, campaign))
        pa = ag.get("pairwise_agreement")
        if pa:
            typer.echo(f"pairwise agreement {_pct(pa['rate'])} +- {_pct(pa['stderr'])} ({pa['n_judgments']} judgments)")
            typer.echo(
                f"Fleiss' kappa {_num(ag['fleiss_kappa'])}, Krippendorff's alpha {_num(ag['krippendorff_alpha'])}"
            )
        else:
            typer.echo(ag.get("note", "no overlapping labels yet"))
        table = Table("labeler", "with others", "with gold", "outlier")
        for r in ag["labelers"]:
            table.add_row(r["labeler"], _pct(r["consensus_agreement"]), _pct(r["gold_agreement"]), r["reason"])
        console.print(table)

    @group.command("ratings")
    def ratings_cmd(
        campaigns: list[str] = typer.Option(None, "--campaign", help="Campaigns to use (default: all)."),
        bootstrap: int = typer.Option(1000, "--bootstrap"),
        server: str = SERVER,
        token: str = TOKEN,
    ) -> None:
        """Elo and Bradley-Terry ratings of the policies behind the completions, with 95 % intervals."""
        out = _client(server, token).ratings(list(campaigns or []), bootstrap)
        for method in ("bradley_terry", "elo"):
            table = Table("#", "policy", "rating", "95 % interval", "battles", title=method)
            for r in out[method]:
                ci = "" if r["ci_low"] is None else f"{r['ci_low']:.0f} - {r['ci_high']:.0f}"
                table.add_row(str(r["rank"]), r["policy"], f"{r['rating']:.0f}", ci, str(r["n_battles"]))
            console.print(table)

    @group.command("export")
    def export_cmd(
        out: Path = typer.Option(..., "--out", help="JSONL file to write."),
        dataset: str = typer.Option("rm", "--dataset", help="sft, rm, ppo, thumbs, ratings or rule_violations."),
        fmt: str = typer.Option("alignloop", "--format", help="alignloop (records) or trl (TRL's columns)."),
        campaigns: list[str] = typer.Option(None, "--campaign", help="Campaigns (default: all but screening)."),
        held_out: str = typer.Option("exclude", "--held-out", help="exclude, include or only held-out groups."),
        server: str = SERVER,
        token: str = TOKEN,
    ) -> None:
        """Export a dataset as JSONL (held-out labeler groups excluded by default)."""
        rows = _client(server, token).export(dataset, fmt, list(campaigns or []), held_out)
        typer.echo(f"wrote {write_jsonl(out, rows)} {dataset} rows to {out}")

    @group.command("simulate")
    def simulate_cmd(
        url: str = typer.Option(..., "--url", help="The service's base URL."),
        token: str = TOKEN,
        labelers: int = typer.Option(10, "--labelers", min=1, help="How many simulated labelers."),
        until_idle: bool = typer.Option(False, "--until-idle", help="Stop once no task is offered."),
        config: Path = typer.Option(None, "--config", help="YAML with a panel section (noise, biases, seed)."),
        held_out_group: int = typer.Option(
            None, "--held-out-group", help="This panel group's labelers form a held-out group (no training data)."
        ),
        prefix: str = typer.Option("sim-", "--prefix", help="Account name prefix."),
        poll: float = typer.Option(1.0, "--poll", help="Seconds between checks for new tasks."),
    ) -> None:
        """The simulated panel as N labelers over HTTP: accounts, screening, every form offered."""
        from alignloop.config import LoopConfig, PanelConfig, load_config
        from alignloop.feedback.simulate import SimulatedLabelers

        if not token:
            raise AlignloopError("no admin token", "pass --token or set ALIGNLOOP_FEEDBACK_TOKEN")
        panel_cfg = load_config(config, LoopConfig).panel if config else PanelConfig()
        sim = SimulatedLabelers(url, token, labelers, panel_cfg, prefix, held_out_group)
        careless = sum(lab.careless for lab in sim.panel.labelers)
        typer.echo(f"{labelers} simulated labelers on {url} ({careless} careless); labeling")
        total = sim.run(until_idle=until_idle, poll=poll, log=typer.echo)
        typer.echo(f"done: {total} tasks answered")

    app.add_typer(group, name="feedback")
