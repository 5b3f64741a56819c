"""The README names only what exists: every `learnloop` command and option in its code (checked against
the real click command tree), every `learnloop.toml` block (validated by the real settings models),
every `LEARNLOOP_*` variable and every `[section] key` it mentions (walked through the real Settings
model). A renamed option or a removed key fails here, not on a newcomer's first day."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from pydantic import BaseModel, ValidationError

from learnloop.cli.main import cli
from learnloop.config import Settings
from learnloop.config.origin import CONFIG_ENV
from learnloop.config.training import TrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"

# A `learnloop` command where a shell would run one: a line's start (after `$ `, variable assignments
# or a path such as .venv/bin/), or after `&&`, `;`, a pipe or `exec`.
COMMAND = re.compile(
    r"(?:^|&&|;|\|\s|\bexec\s)\s*(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:\S*/)?learnloop\s+(?P<rest>.+)$"
)
ENV_VAR = re.compile(r"\bLEARNLOOP_[A-Z0-9_]*[A-Z0-9]\b")
SECTION_KEY = re.compile(r"^\[(?P<section>[a-z_.]+)\]\s+(?P<key>[a-z_]+)\b")


@dataclass(frozen=True)
class Snippet:
    line: int
    text: str
    lang: str  # the fence's language; "" for an indented block, "inline" for a `code span`


def snippets(text: str) -> list[Snippet]:
    """Fenced blocks, indented blocks and inline code spans, with the README line each starts on."""
    out: list[Snippet] = []
    lines = text.splitlines()
    i, prev_blank = 0, True
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(\s*)```(\w*)", line)
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append(Snippet(i + 2, "\n".join(lines[i + 1 : j]), fence.group(2)))
            i, prev_blank = j + 1, False
            continue
        if prev_blank and line.startswith("    ") and line.strip():
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            out.append(Snippet(i + 1, "\n".join(x[4:] for x in lines[i:j]), ""))
            i, prev_blank = j, True
            continue
        for span in re.findall(r"`([^`\n]+)`", line):
            out.append(Snippet(i + 1, span, "inline"))
        prev_blank = not line.strip()
        i += 1
    return out


def _option_names(command: click.Command) -> dict[str, click.Parameter]:
    names: dict[str, click.Parameter] = {}
    for param in command.get_params(click.Context(command)):
        for name in [*param.opts, *getattr(param, "secondary_opts", [])]:
            names[name] = param
    return names


def _walk(tokens: list[str], start: click.Command, where: str) -> tuple[list[str], click.Command]:
    """Check ``tokens`` against the tree from ``start``; return the problems and the last group."""
    problems: list[str] = []
    command, group = start, start
    ctx = click.Context(cli)
    skip_value = False
    for raw in tokens:
        token = raw.strip("[]()")
        if skip_value:
            skip_value = False
            continue
        if not token or token in ("...", "\\") or token.startswith(("<", "$", '"', "'")):
            continue
        if token.startswith("-") and len(token) > 1:
            name = token.split("=", 1)[0].rstrip(",.:")
            params = _option_names(command)
            if name not in params:
                path = command.name if command is not cli else "learnloop"
                problems.append(
                    f"{where}: `{path}` has no option {name} (it has: {', '.join(sorted(params))})"
                )
                continue
            param = params[name]
            skip_value = "=" not in token and not (isinstance(param, click.Option) and param.is_flag)
            continue
        if isinstance(command, click.Group):
            choices = token.split("|")
            found = [command.get_command(ctx, c) for c in choices]
            missing = [c for c, f in zip(choices, found, strict=True) if f is None]
            if missing:
                path = command.name if command is not cli else "learnloop"
                problems.append(f"{where}: `{path}` has no subcommand {'|'.join(missing)}")
                return problems, group
            group, command = command, found[0]
            continue
        # An argument of a command (a name, a path, a version id): nothing to check.
    return problems, group if isinstance(command, click.Group) else group


def command_problems(snippet: Snippet) -> list[str]:
    problems: list[str] = []
    lines = snippet.text.splitlines()
    if snippet.lang == "inline":
        lines = [snippet.text] if snippet.text.startswith("learnloop ") else []
    for offset, line in enumerate(lines):
        if snippet.lang in ("python", "toml", "json"):
            break  # code and config, not shell: their `learnloop` words are modules and model names
        match = COMMAND.search(line)
        if not match:
            continue
        rest = match.group("rest").split("`")[0].split("#")[0]
        rest = re.split(r"\s(?:&&|;|\|)\s|\s>\s", rest)[0]
        where = f"README.md:{snippet.line + (offset if snippet.lang != 'inline' else 0)}"
        start: click.Command = cli
        for part in re.split(r"\s{2,}/\s{2,}|\s/\s", rest):  # `versions list  /  show V`: same group
            try:
                tokens = shlex.split(part)
            except ValueError:
                tokens = part.split()
            if start is not cli and tokens and tokens[0] == start.name:
                tokens = tokens[1:]  # `eval show E  /  eval list`: the group named again
            found, group = _walk(tokens, start, where)
            problems += found
            start = group
    return problems


def _field(model: type[BaseModel], name: str) -> type[BaseModel] | None | bool:
    """The nested model of ``model.name`` (None for a plain value), False when there is no such field."""
    field = model.model_fields.get(name)
    if field is None:
        return False
    annotation = field.annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        inner = getattr(candidate, "__args__", None)
        for t in (candidate, *(inner or ())):
            if isinstance(t, type) and issubclass(t, BaseModel):
                return t
    return None


def setting_problems(snippet: Snippet) -> list[str]:
    where = f"README.md:{snippet.line}"
    problems: list[str] = []
    for var in ENV_VAR.findall(snippet.text):
        if var == CONFIG_ENV:
            continue  # names the config file: read by load_settings, not a setting
        model: type[BaseModel] | None = Settings
        parts = var.removeprefix("LEARNLOOP_").lower().split("__")
        for part in parts:
            found = _field(model, part) if model else None
            if found is False:
                problems.append(f"{where}: {var}: Settings has no setting {'.'.join(parts)}")
                break
            model = found or None
    if snippet.lang == "inline":
        m = SECTION_KEY.match(snippet.text)
        if m:
            model = Settings
            for part in [*m.group("section").split("."), m.group("key")]:
                found = _field(model, part) if model else None
                if found is False:
                    problems.append(
                        f"{where}: `{snippet.text}`: no setting {m.group('section')}.{m.group('key')}"
                    )
                    break
                model = found or None
    if snippet.lang == "toml":
        data = tomllib.loads(snippet.text)
        is_run = "algorithm" in data and "output_dir" in data  # a training config (train.toml)
        try:
            (TrainConfig if is_run else Settings).model_validate(data)
        except ValidationError as exc:
            what = "TrainConfig" if is_run else "learnloop.toml"
            problems.append(f"{where}: this toml block is not a valid {what}: {exc}")
    return problems


def test_every_command_option_and_setting_the_readme_names_exists() -> None:
    found = snippets(README.read_text())
    assert sum(s.lang == "toml" for s in found) >= 5 and sum(s.lang == "inline" for s in found) > 500
    problems = [p for s in found for p in command_problems(s) + setting_problems(s)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("    learnloop serve --no-such-flag\n", "`serve` has no option --no-such-flag"),
        ("    learnloop versions list  /  shw V\n", "`versions` has no subcommand shw"),
        ("    learnloop jobs list|show|frobnicate\n", "`jobs` has no subcommand frobnicate"),
        ("`learnloop lops status`\n", "`learnloop` has no subcommand lops"),
        ("    LEARNLOOP_SERVING__BAKEND=vllm learnloop serve\n", "Settings has no setting serving.bakend"),
        ("`[daemon] lancher = []`\n", "no setting daemon.lancher"),
        (
            '```toml\n[[loops]]\nname = "a"\n[loops.triggers]\nmin_new = 3\n```\n',
            "not a valid learnloop.toml",
        ),
    ],
)
def test_the_checker_catches_what_does_not_exist(text: str, expected: str) -> None:
    """Each kind of mistake, planted: the checker names it (so the test above can fail)."""
    problems = [p for s in snippets("\n" + text) for p in command_problems(s) + setting_problems(s)]
    assert any(expected in p for p in problems), problems


def test_the_checker_accepts_what_exists() -> None:
    text = (
        "\n    learnloop serve --host 0.0.0.0 --port 9000 --no-watch-inbox\n"
        "    learnloop versions list [--json]  /  show V [--json]  /  diff A B [--json]\n"
        "    LEARNLOOP_SERVING__BACKEND=vllm learnloop serve   # and `learnloop alias set learnloop base`\n"
        "\n`learnloop loops status [--json] [--check]` and `[daemon] launcher = []`\n"
    )
    assert [p for s in snippets(text) for p in command_problems(s) + setting_problems(s)] == []
