"""The Dockerfile parser (strata.build.dockerfile) against BuildKit's documented behaviour."""

from __future__ import annotations

import pytest

from strata.build.dockerfile import (
    Dockerfile,
    Instruction,
    parse,
    parse_duration,
    parse_instruction,
)
from strata.errors import DockerfileError, InvalidContent


def _only(text: str) -> Instruction:
    """The single instruction after ``FROM busybox``."""
    df = parse("FROM busybox\n" + text)
    assert len(df.stages) == 1
    (instruction,) = df.stages[0].instructions
    return instruction


def _error(text: str) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse(text)
    return info.value


# ------------------------------------------------------------------ directives


@pytest.mark.parametrize(
    ("text", "escape", "syntax"),
    [
        ("FROM a\n", "\\", None),
        ("# escape=`\nFROM a\n", "`", None),
        ("# escape=\\\nFROM a\n", "\\", None),
        ("#escape=`\nFROM a\n", "`", None),
        ("#  ESCAPE = `  \nFROM a\n", "`", None),
        ("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\n", "`", "docker/dockerfile:1"),
        ("# escape=`\n# syntax=docker/dockerfile:1.4\nFROM a\n", "`", "docker/dockerfile:1.4"),
        # once a comment, an empty line or an instruction was seen, directives are comments
        ("# a comment\n# escape=`\nFROM a\n", "\\", None),
        ("\n# escape=`\nFROM a\n", "\\", None),
        ("FROM a\n# escape=`\n", "\\", None),
        # an unknown directive is a comment and ends the directives
        ("# unknown=x\n# escape=`\nFROM a\n", "\\", None),
        # a byte order mark before the first directive
        ("\ufeff# escape=`\nFROM a\n", "`", None),
        ("  # escape=`\nFROM a\n", "`", None),
    ],
    ids=[
        "none", "backtick", "backslash", "no-space", "case-and-spaces", "syntax-then-escape",
        "escape-then-syntax", "after-comment", "after-empty-line", "after-instruction",
        "after-unknown-directive", "bom", "leading-whitespace",
    ],
)  # fmt: skip
def test_parser_directives(text: str, escape: str, syntax: str | None) -> None:
    df = parse(text)
    assert df.escape == escape
    assert df.syntax == syntax


def test_parser_rejects_a_repeated_directive() -> None:
    err = _error("# escape=`\n# escape=\\\nFROM a\n")
    assert "only one escape parser directive can be used" in str(err)
    assert err.line == 2


def test_parser_rejects_a_bad_escape_character() -> None:
    err = _error("# escape=x\nFROM a\n")
    assert "invalid escape token" in str(err)


# ------------------------------------------------------------------ lines


def test_parser_joins_continuations_as_buildkit() -> None:
    ins = _only("RUN echo a \\\n    b\\\nc\n")
    assert ins.args == ("echo a     bc",)
    assert (ins.line, ins.end_line) == (2, 4)


def test_parser_skips_comments_inside_continuations() -> None:
    ins = _only("RUN echo a \\\n# comment\n  # indented comment\n  b\n")
    assert ins.args == ("echo a   b",)


def test_parser_warns_about_empty_continuation_lines() -> None:
    df = parse("FROM a\nRUN echo a \\\n\n  b\n")
    (ins,) = df.stages[0].instructions
    assert ins.args == ("echo a   b",)
    assert len(df.warnings) == 1
    assert "Empty continuation line" in df.warnings[0].message


def test_parser_trailing_whitespace_after_backslash_still_continues() -> None:
    ins = _only("RUN echo a \\   \n b\n")
    assert ins.args == ("echo a  b",)


def test_parser_continuation_at_end_of_file() -> None:
    ins = _only("RUN echo a \\")
    assert ins.args == ("echo a",)


def test_parser_backtick_continuation() -> None:
    df = parse("# escape=`\nFROM a\nRUN echo C:\\dir `\n  next\n")
    assert df.stages[0].instructions[0].args == ("echo C:\\dir   next",)


def test_parser_handles_crlf_line_endings() -> None:
    df = parse("FROM a\r\nRUN echo a \\\r\n b\r\nENV A=1\r\n")
    run, env = df.stages[0].instructions
    assert run.args == ("echo a  b",)
    assert env.pairs() == (("A", "1"),)


def test_parser_line_numbers_skip_comments_and_blank_lines() -> None:
    df = parse("# c\n\nFROM a\n\n# c\nRUN x\n")
    assert df.stages[0].line == 3
    assert df.stages[0].instructions[0].line == 6


def test_parser_keywords_are_case_insensitive() -> None:
    df = parse("from a as B\nrun echo\nCoPy x y\n")
    assert [i.keyword for i in df.stages[0].instructions] == ["RUN", "COPY"]
    assert df.stages[0].name == "b"


def test_parser_keeps_the_original_line() -> None:
    ins = _only("COPY --chown=1:1 a \\\n b\n")
    assert ins.original == "COPY --chown=1:1 a  b"


# ------------------------------------------------------------------ forms


@pytest.mark.parametrize(
    ("line", "args", "json_form"),
    [
        ('RUN ["echo", "a b"]', ("echo", "a b"), True),
        ("RUN echo a b", ("echo a b",), False),
        ('CMD ["a"]', ("a",), True),
        ("CMD []", (), True),
        ('ENTRYPOINT ["x", "y"]', ("x", "y"), True),
        ("ENTRYPOINT [not json", ("[not json",), False),
        ("RUN [ \"a\" ", ('[ "a"',), False),
        ("CMD ['single']", ("['single']",), False),
        ('RUN  ["a",  "b"]  ', ("a", "b"), True),
        ('SHELL ["/bin/bash", "-c"]', ("/bin/bash", "-c"), True),
        ('VOLUME ["/a", "/b"]', ("/a", "/b"), True),
        ('COPY ["a b", "/c d/"]', ("a b", "/c d/"), True),
        ('ADD ["x", "/y"]', ("x", "/y"), True),
        ('RUN ["unicode \\u00e9"]', ("unicode é",), True),
    ],
    ids=[
        "run-json", "run-shell", "cmd-json", "cmd-empty", "entrypoint-json", "invalid-json",
        "unterminated-json", "single-quotes-are-not-json", "spaces", "shell", "volume-json",
        "copy-json-spaces", "add-json", "json-escapes",
    ],
)  # fmt: skip
def test_parser_json_and_shell_forms(line: str, args: tuple[str, ...], json_form: bool) -> None:
    ins = _only(line + "\n")
    assert ins.args == args
    assert ins.json_form is json_form


def test_parser_rejects_json_arrays_of_non_strings() -> None:
    err = _error('FROM a\nRUN ["a", 1]\n')
    assert "arrays must be comprised of strings only" in str(err)
    assert err.line == 2


def test_parser_shell_text_property() -> None:
    assert _only("RUN echo hi\n").shell_text == "echo hi"
    assert _only('RUN ["echo"]\n').shell_text == ""


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("COPY a b /c/", ("a", "b", "/c/")),
        ('COPY "a b" c', ('"a', 'b"', "c")),
        ("COPY\ta\t\tb", ("a", "b")),
        ("VOLUME /a /b", ("/a", "/b")),
        ("EXPOSE 80 443/tcp", ("80", "443/tcp")),
        ("ADD http://x/y /z", ("http://x/y", "/z")),
    ],
    ids=["copy", "copy-quotes-not-grouped", "tabs", "volume", "expose", "add-url"],
)
def test_parser_whitespace_split_words(line: str, words: tuple[str, ...]) -> None:
    assert _only(line + "\n").words == words


# ------------------------------------------------------------------ ENV LABEL ARG


@pytest.mark.parametrize(
    ("line", "pairs"),
    [
        ("ENV A=1", (("A", "1"),)),
        ("ENV A=1 B=2", (("A", "1"), ("B", "2"))),
        ('ENV A="a b" B=c', (("A", '"a b"'), ("B", "c"))),
        ("ENV A=a\\ b", (("A", "a\\ b"),)),
        ("ENV A 1", (("A", "1"),)),
        ("ENV A a b  c", (("A", "a b  c"),)),
        ("ENV A=", (("A", ""),)),
        ("ENV A=x=y", (("A", "x=y"),)),
        ("ENV A='$B c'", (("A", "'$B c'"),)),
        ('LABEL "a b"="c d"', (('"a b"', '"c d"'),)),
        ("LABEL a=b c=d", (("a", "b"), ("c", "d"))),
        ("LABEL legacy value words", (("legacy", "value words"),)),
        ("ARG A", (("A", None),)),
        ("ARG A=1", (("A", "1"),)),
        ("ARG A=1 B C=", (("A", "1"), ("B", None), ("C", ""))),
        ('ARG A="x y"', (("A", '"x y"'),)),
    ],
    ids=[
        "env", "env-two", "env-quoted", "env-escaped-space", "env-legacy", "env-legacy-spaces",
        "env-empty", "env-equals-in-value", "env-single-quotes", "label-quoted-key", "label-two",
        "label-legacy", "arg-bare", "arg-default", "arg-several", "arg-quoted",
    ],
)  # fmt: skip
def test_parser_pairs(line: str, pairs: tuple[tuple[str, str | None], ...]) -> None:
    assert _only(line + "\n").pairs() == pairs


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ENV", "ENV requires at least one argument"),
        ("ENV A", "ENV must have two arguments"),
        ("ENV A=1 B", "can't find = in \"B\""),
        ("LABEL", "LABEL requires at least one argument"),
        ("ARG", "ARG requires at least one argument"),
        ("ARG =x", "ARG names can not be blank"),
        ("ENV =x", "ENV names can not be blank"),
        ("LABEL a=b =c", "LABEL names can not be blank"),
    ],
    ids=[
        "env-empty", "env-one-word", "env-mixed", "label-empty", "arg-empty", "arg-blank-name",
        "env-blank-name", "label-blank-name",
    ],
)
def test_parser_rejects_bad_pairs(line: str, message: str) -> None:
    err = _error("FROM a\n" + line + "\n")
    assert message in str(err)
    assert err.line == 2


def test_pairs_of_other_instructions_are_empty() -> None:
    assert _only("RUN a=b\n").pairs() == ()


# ------------------------------------------------------------------ flags


def test_parser_flags() -> None:
    ins = _only("COPY --from=build --chown=1:2 --chmod=755 --link a /b\n")
    assert ins.flag("from") == "build"
    assert ins.flag("chown") == "1:2"
    assert ins.flag("chmod") == "755"
    assert ins.bool_flag("link")
    assert not ins.bool_flag("parents")
    assert ins.flag("missing") is None
    assert ins.words == ("a", "/b")


def test_parser_repeatable_mount_flag() -> None:
    ins = _only("RUN --mount=type=cache,target=/a --network=none --mount=type=tmpfs,target=/t make\n")
    assert ins.flags["mount"] == ("type=cache,target=/a", "type=tmpfs,target=/t")
    assert ins.flag("network") == "none"
    assert ins.args == ("make",)


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ('COPY --from="my stage" a b', "from", "my stage"),
        ("COPY --chown='1:1' a b", "chown", "1:1"),
        ("COPY --link=false a b", "link", "false"),
        ("ADD --keep-git-dir=true a b", "keep-git-dir", "true"),
        ("ADD --checksum=sha256:abc a b", "checksum", "sha256:abc"),
        ("FROM --platform=linux/arm64 x", "platform", "linux/arm64"),
        ("COPY --exclude=*.md --exclude=*.txt a b", "exclude", "*.txt"),
    ],
    ids=["quoted", "single-quoted", "bool-false", "keep-git-dir", "checksum", "platform", "exclude"],
)
def test_parser_flag_values(line: str, name: str, value: str) -> None:
    df = parse(line + "\n" if line.startswith("FROM") else "FROM x\n" + line + "\n")
    ins = df.stages[0].from_instruction if line.startswith("FROM") else df.stages[0].instructions[0]
    assert ins is not None
    assert ins.flag(name) == value


def test_parser_link_false_is_off() -> None:
    assert not _only("COPY --link=false a b\n").bool_flag("link")


def test_parser_double_dash_ends_flags() -> None:
    ins = _only("RUN -- --mount=x\n")
    assert ins.flags == {}
    assert ins.args == ("--mount=x",)


def test_parser_flags_only_at_the_start() -> None:
    ins = _only("RUN echo --mount=x\n")
    assert ins.flags == {}
    assert ins.args == ("echo --mount=x",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY --bogus=1 a b", "unknown flag: bogus"),
        ("RUN --from=x echo", "unknown flag: from"),
        ("ENV --x=1 A=1", "unknown flag: x"),
        ("COPY --from a b", "missing a value on flag: from"),
        ("COPY --from=a --from=b x y", "duplicate flag specified: from"),
        ("COPY --link=maybe a b", "expecting boolean value for flag link"),
        ("ADD --from=x a b", "unknown flag: from"),
    ],
    ids=["unknown", "wrong-instruction", "env", "missing-value", "duplicate", "bad-bool", "add-from"],
)
def test_parser_rejects_bad_flags(line: str, message: str) -> None:
    err = _error("FROM a\n" + line + "\n")
    assert message in str(err)
    assert err.line == 2


# ------------------------------------------------------------------ heredocs


def test_parser_run_heredoc() -> None:
    df = parse("FROM a\nRUN <<EOF\necho a\n  echo b\nEOF\nRUN after\n")
    run, after = df.stages[0].instructions
    assert run.args == ("<<EOF",)
    assert len(run.heredocs) == 1
    doc = run.heredocs[0]
    assert (doc.name, doc.content, doc.expand, doc.chomp) == ("EOF", "echo a\n  echo b\n", True, False)
    assert (run.line, run.end_line) == (2, 5)
    assert after.line == 6
    assert after.args == ("after",)


def test_parser_several_heredocs_on_one_line() -> None:
    ins = _only("RUN cat <<A > /a && cat <<B > /b\nfrom a\nA\nfrom b\nB\n")
    assert [(d.name, d.content) for d in ins.heredocs] == [("A", "from a\n"), ("B", "from b\n")]


@pytest.mark.parametrize(
    ("word", "name", "expand"),
    [
        ("<<EOF", "EOF", True),
        ("<<'EOF'", "EOF", False),
        ('<<"EOF"', "EOF", False),
        ("<<E'O'F", "EOF", False),
        ("<<-EOF", "EOF", True),
        ("<<-'EOF'", "EOF", False),
    ],
    ids=["plain", "single-quoted", "double-quoted", "partly-quoted", "chomp", "chomp-quoted"],
)
def test_parser_heredoc_quoting(word: str, name: str, expand: bool) -> None:
    ins = _only(f"COPY {word} /dst\nbody\n\t{name}\n" if "-" in word else f"COPY {word} /dst\nbody\n{name}\n")
    (doc,) = ins.heredocs
    assert doc.name == name
    assert doc.expand is expand
    assert doc.content == "body\n"


def test_parser_heredoc_chomp_strips_leading_tabs() -> None:
    ins = _only("RUN <<-EOT sh\n\techo a\n\t\techo b\n  spaces stay\n\tEOT\n")
    (doc,) = ins.heredocs
    assert doc.chomp
    assert doc.content == "echo a\necho b\n  spaces stay\n"


def test_parser_heredoc_without_chomp_needs_exact_terminator() -> None:
    ins = _only("RUN <<EOF\n\tEOF\nEOF\n")
    assert ins.heredocs[0].content == "\tEOF\n"


def test_parser_heredoc_keeps_empty_lines_and_comments() -> None:
    ins = _only("RUN <<EOF\n\n# not a comment here\n\\\nEOF\n")
    assert ins.heredocs[0].content == "\n# not a comment here\n\\\n"


def test_parser_heredoc_with_file_descriptor() -> None:
    ins = _only("RUN 3<<EOF cat /dev/fd/3\nx\nEOF\n")
    assert ins.heredocs[0].fd == 3


def test_parser_copy_heredoc_counts_as_a_source() -> None:
    ins = _only("COPY <<EOF /etc/x\nhello\nEOF\n")
    assert ins.words == ("<<EOF", "/etc/x")
    assert ins.heredocs[0].content == "hello\n"


def test_parser_no_heredoc_in_json_form_or_quotes() -> None:
    assert _only('RUN ["cat", "<<EOF"]\n').heredocs == ()
    assert _only("RUN echo '<<EOF'\n").heredocs == ()
    assert _only("RUN echo a<<EOF\n").heredocs == ()


def test_parser_no_heredoc_in_other_instructions() -> None:
    df = parse("FROM a\nENV A=<<EOF\nRUN x\n")
    assert [i.keyword for i in df.stages[0].instructions] == ["ENV", "RUN"]


def test_parser_unterminated_heredoc() -> None:
    err = _error("FROM a\nRUN <<EOF\necho\n")
    assert "unterminated heredoc" in str(err)
    assert err.line == 2


# ------------------------------------------------------------------ stages and FROM


def test_parser_stages_and_meta_args() -> None:
    df = parse(
        "ARG BASE=busybox\nARG V\nFROM $BASE AS Build\nRUN a\nFROM --platform=linux/amd64 build\n"
        "COPY --from=build /x /y\n"
    )
    assert [a.pairs() for a in df.meta_args] == [(("BASE", "busybox"),), (("V", None),)]
    first, second = df.stages
    assert (first.index, first.name, first.base, first.platform) == (0, "build", "$BASE", None)
    assert (second.index, second.name, second.base, second.platform) == (1, None, "build", "linux/amd64")
    assert len(first.instructions) == 1
    assert df.stage("BUILD") is first
    assert df.stage("1") is second
    with pytest.raises(DockerfileError):
        df.stage("nope")


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("RUN x\nFROM a\n", "no build stage in current context", 1),
        ("ARG A\n", "no FROM", None),
        ("", "no FROM", None),
        ("FROM a AS 1st\n", "invalid name for build stage", 1),
        ("FROM a AS b\nFROM c AS B\n", "duplicate stage name", 2),
        ("FROM a b\n", "FROM requires either one or three arguments", 1),
        ("FROM a FOR b\n", "FROM requires either one or three arguments", 1),
        ("FROM\n", "FROM requires either one or three arguments", 1),
        ("FROM a AS b_c-d.e\nFROM a AS x!y\n", "invalid name for build stage", 2),
    ],
    ids=[
        "instruction-before-from", "only-args", "empty", "name-starts-with-digit", "duplicate-name",
        "two-words", "not-as", "empty-from", "symbols-in-name",
    ],
)  # fmt: skip
def test_parser_rejects_bad_stages(text: str, message: str, line: int | None) -> None:
    err = _error(text)
    assert message in str(err)
    assert err.line == line


def test_parser_scratch_is_just_a_name() -> None:
    assert parse("FROM scratch\n").stages[0].base == "scratch"


# ------------------------------------------------------------------ instructions


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("FOO bar", "unknown instruction: FOO"),
        ("COPY a", "COPY requires at least two arguments, but only one was provided"),
        ("ADD", "ADD requires at least two arguments"),
        ("SHELL /bin/sh -c", "SHELL requires the arguments to be in JSON form"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("USER", "USER requires exactly one argument"),
        ("STOPSIGNAL 1 2", "STOPSIGNAL requires exactly one argument"),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("VOLUME", "VOLUME requires at least one argument"),
        ('VOLUME [""]', "VOLUME specified can not be an empty string"),
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("RUN", "RUN requires at least one argument"),
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD MAINTAINER x", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("ONBUILD BOGUS x", "unknown instruction: BOGUS"),
    ],
    ids=[
        "unknown", "copy-one-arg", "add-none", "shell-not-json", "shell-empty", "workdir",
        "user", "stopsignal-two", "expose", "volume", "volume-empty-string", "maintainer", "run",
        "onbuild-empty", "onbuild-onbuild", "onbuild-from", "onbuild-maintainer",
        "onbuild-unknown",
    ],
)  # fmt: skip
def test_parser_rejects_bad_instructions(line: str, message: str) -> None:
    err = _error("FROM a\n\n" + line + "\n")
    assert message in str(err)
    assert err.line == 3
    assert err.path == "Dockerfile"


def test_parser_error_is_invalid_content_with_file_and_line() -> None:
    with pytest.raises(InvalidContent) as info:
        parse("FROM a\nBOGUS\n", path="build/Dockerfile.dev")
    assert str(info.value) == "build/Dockerfile.dev:2: unknown instruction: BOGUS"


def test_parser_single_string_instructions_keep_spaces() -> None:
    assert _only("WORKDIR /a b\n").args == ("/a b",)
    assert _only("USER app:grp\n").args == ("app:grp",)
    assert _only("STOPSIGNAL SIGKILL\n").args == ("SIGKILL",)
    assert _only("MAINTAINER A B <a@b>\n").args == ("A B <a@b>",)


def test_parser_onbuild_keeps_the_trigger_text_and_parses_it() -> None:
    ins = _only("ONBUILD  RUN --mount=type=cache,target=/c echo hi\n")
    assert ins.args == ("RUN --mount=type=cache,target=/c echo hi",)
    assert ins.trigger is not None
    assert ins.trigger.keyword == "RUN"
    assert ins.trigger.flag("mount") == "type=cache,target=/c"
    assert ins.trigger.args == ("echo hi",)


def test_parser_onbuild_heredoc_joins_the_body_to_the_expression() -> None:
    ins = _only("ONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert ins.trigger is not None
    assert ins.trigger.heredocs[0].content == "echo hi\n"
    assert ins.args == ("RUN <<EOF\necho hi\nEOF",)


@pytest.mark.parametrize(
    ("line", "args", "json_form"),
    [
        ("HEALTHCHECK NONE", ("NONE",), False),
        ("HEALTHCHECK none", ("NONE",), False),
        ("HEALTHCHECK CMD curl -f http://x/", ("CMD-SHELL", "curl -f http://x/"), False),
        ('HEALTHCHECK CMD ["curl", "-f"]', ("CMD", "curl", "-f"), True),
        ("HEALTHCHECK --interval=5s --retries=3 CMD true", ("CMD-SHELL", "true"), False),
        ("HEALTHCHECK --start-interval=1s --start-period=1m30s cmd true", ("CMD-SHELL", "true"), False),
    ],
    ids=["none", "none-lower", "shell", "exec", "options", "start-options"],
)
def test_parser_healthcheck(line: str, args: tuple[str, ...], json_form: bool) -> None:
    ins = _only(line + "\n")
    assert ins.args == args
    assert ins.json_form is json_form


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK --interval=5s NONE", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK RUN x", 'Unknown type "RUN" in HEALTHCHECK (try CMD)'),
        ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK CMD []", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK --interval=abc CMD x", "invalid duration"),
        ("HEALTHCHECK --interval=1us CMD x", "cannot be less than 1ms"),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative"),
        ("HEALTHCHECK --retries=x CMD x", "invalid value for --retries"),
        ("HEALTHCHECK --bogus=1 CMD x", "unknown flag: bogus"),
    ],
    ids=[
        "empty", "none-args", "none-flags", "bad-type", "no-command", "empty-json",
        "bad-duration", "too-short", "negative-retries", "bad-retries", "bad-flag",
    ],
)  # fmt: skip
def test_parser_rejects_bad_healthchecks(line: str, message: str) -> None:
    err = _error("FROM a\n" + line + "\n")
    assert message in str(err)
    assert err.line == 2


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("30s", 30_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("100ms", 100_000_000),
        ("5us", 5_000),
        ("7ns", 7),
    ],
)
def test_parse_duration(text: str, nanoseconds: int) -> None:
    assert parse_duration(text) == nanoseconds


@pytest.mark.parametrize("text", ["", "5", "s", "1x", "1s2", "-"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(DockerfileError):
        parse_duration(text)


# ------------------------------------------------------------------ single instructions


def test_parse_instruction_for_onbuild_triggers() -> None:
    ins = parse_instruction("COPY --chown=1:1 a /b")
    assert (ins.keyword, ins.flag("chown"), ins.words) == ("COPY", "1:1", ("a", "/b"))


def test_parse_instruction_honours_the_escape_character() -> None:
    ins = parse_instruction("RUN echo a `\n b", escape="`")
    assert ins.args == ("echo a  b",)


def test_parse_instruction_rejects_two_instructions() -> None:
    with pytest.raises(DockerfileError):
        parse_instruction("RUN a\nRUN b")


def test_parse_instruction_rejects_unknown() -> None:
    with pytest.raises(DockerfileError, match="unknown instruction"):
        parse_instruction("NOPE x")


# ------------------------------------------------------------------ values


def test_instructions_are_hashable_values() -> None:
    a = _only("COPY --from=x --chown=1 a b\n")
    b = _only("COPY --from=x --chown=1 a b\n")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_dockerfile_is_a_frozen_value() -> None:
    df = parse("FROM a\n")
    assert isinstance(df, Dockerfile)
    with pytest.raises(AttributeError):
        df.escape = "`"  # type: ignore[misc]


def test_parser_a_realistic_dockerfile() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG GO=1.22\n"
        "FROM golang:${GO} AS build\n"
        "WORKDIR /src\n"
        "COPY go.mod go.sum ./\n"
        "RUN --mount=type=cache,target=/root/.cache/go-build \\\n"
        "    go build -o /out/app .\n"
        "\n"
        "FROM gcr.io/distroless/base\n"
        "COPY --from=build /out/app /app\n"
        "USER nonroot\n"
        'ENTRYPOINT ["/app"]\n'
    )
    df = parse(text)
    assert df.syntax == "docker/dockerfile:1"
    assert [s.name for s in df.stages] == ["build", None]
    assert [i.keyword for i in df.stages[0].instructions] == ["WORKDIR", "COPY", "RUN"]
    run = df.stages[0].instructions[2]
    assert run.args == ("go build -o /out/app .",)
    assert (run.line, run.end_line) == (6, 7)
    assert df.stages[1].instructions[-1].args == ("/app",)


def test_parse_instruction_reads_an_onbuild_expression_back() -> None:
    onbuild = _only("ONBUILD RUN <<EOF\necho hi\nEOF\n")
    again = parse_instruction(onbuild.args[0])
    assert onbuild.trigger is not None
    assert (again.keyword, again.args, again.heredocs) == (
        onbuild.trigger.keyword,
        onbuild.trigger.args,
        onbuild.trigger.heredocs,
    )


def test_parser_unsplittable_line_has_no_heredoc() -> None:
    ins = _only('RUN echo "<<EOF\n')
    assert ins.heredocs == ()
    assert ins.args == ('echo "<<EOF',)
