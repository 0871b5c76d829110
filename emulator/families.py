"""Model families: which family a model id belongs to, what its `modelInput` must look like, and the
deterministic reply it gets, all as columnar (Arrow schema + Polars expression) definitions.

Each family declares one or more Arrow schemas its `modelInput` may decode under (Claude accepts content as
a list of blocks or as a plain string, for instance), a rule list that turns a decoded record into a
Bedrock-style 400 message, and an expression building its `modelOutput`. The replies are documented in
emulator/README.md so that tests can check a join:

- reply = "Emulated reply to: " + prompt, cut to the longest prefix of at most 4 × max_tokens UTF-8 bytes;
- input tokens = ceil(utf8 bytes of system + all message text / 4), output tokens = ceil(reply bytes / 4),
  both at least 1;
- Titan V2 embeddings: float32 values fixed by a hash of `inputText`, unit norm when `normalize`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import polars as pl
import pyarrow as pa

from emulator.structured import PLACEHOLDER, claude_content, converse_content, splice

REPLY_PREFIX = "Emulated reply to: "
GEO_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")
EMBEDDING_DIMENSIONS = (256, 512, 1024)
EMBEDDING_HASH_SEED = 0x5EED


class Family(StrEnum):
    CLAUDE = "claude"
    NOVA = "nova"
    CONVERSE = "converse"
    LLAMA = "llama"
    MISTRAL_PROMPT = "mistral_prompt"
    MISTRAL_CHAT = "mistral_chat"
    TITAN_EMBED_V2 = "titan_embed_v2"


def model_key(model_id: str) -> str:
    """The model or profile id inside an ARN (`arn:...:foundation-model/x` -> `x`), else the id itself."""
    if model_id.startswith("arn:"):
        resource = model_id.split(":", 5)[-1]
        return resource.split("/", 1)[-1]
    return model_id


_PREFIX_RULES: tuple[tuple[str, Family], ...] = (
    ("anthropic.claude", Family.CLAUDE),
    ("amazon.nova", Family.NOVA),
    ("meta.llama", Family.LLAMA),
    ("mistral.mistral-large-2407", Family.MISTRAL_CHAT),
    ("mistral.pixtral", Family.MISTRAL_CHAT),
    ("mistral.", Family.MISTRAL_PROMPT),
    ("amazon.titan-embed-text-v2", Family.TITAN_EMBED_V2),
)


def resolve_family(model_id: str, invocation_type: str | None = "InvokeModel") -> Family | None:
    """The family answering for `model_id`; Converse-type jobs answer in the Converse shape for any model.

    Application inference profiles have opaque ids on AWS; here one is recognised when its id contains a
    family's model id (e.g. `application-inference-profile/anthropic.claude-x-team-a`).
    """
    key = model_key(model_id)
    for geo in GEO_PREFIXES:
        if key.startswith(geo):
            key = key[len(geo) :]
            break
    family = next((fam for prefix, fam in _PREFIX_RULES if key.startswith(prefix)), None)
    if family is None:
        family = next((fam for prefix, fam in _PREFIX_RULES if prefix.rstrip(".") in key), None)
    if invocation_type == "Converse" and family is not None:
        return Family.CONVERSE
    return family


# ----------------------------------------------------------------------------------------------- inputs
_S = pa.string()
_TEXT_BLOCKS = pa.list_(pa.struct([("type", _S), ("text", _S)]))
_PLAIN_BLOCKS = pa.list_(pa.struct([("text", _S)]))


def _messages(content: pa.DataType) -> pa.DataType:
    return pa.list_(pa.struct([("role", _S), ("content", content)]))


def _record_schema(model_input: list[tuple[str, pa.DataType]]) -> pa.Schema:
    # modelId is decoded only to refuse it: Bedrock rejects a model id inside modelInput.
    fields = [("modelId", _S), *model_input]
    return pa.schema([("recordId", _S), ("modelInput", pa.struct(fields))])


# A feature frame is what every family reduces a record to before the reply is built.
FEATURES = {
    "prompt": pl.String,
    "text_bytes": pl.Int64,
    "max_tokens": pl.Int64,
    "error": pl.String,
    "text": pl.String,
    "dims": pl.Int64,
    "normalize": pl.Boolean,
    "tool": pl.String,  # the forced tool's name (structured answers; emulator/structured.py)
    "tools": pl.Int64,  # how many tools the record declares (their JSON counts as input)
}

_MI = pl.col("modelInput")


def _field(name: str) -> pl.Expr:
    return _MI.struct.field(name)


def _block_bytes(blocks: pl.Expr) -> pl.Expr:
    return blocks.list.eval(pl.element().struct.field("text").str.len_bytes().cast(pl.Int64)).list.sum()


def _block_text(blocks: pl.Expr) -> pl.Expr:
    return blocks.list.eval(pl.element().struct.field("text")).list.drop_nulls().list.join("\n")


def _chat(messages: pl.Expr, blocks: bool) -> tuple[pl.Expr, pl.Expr]:
    """(bytes of all message text, text of the last user message)."""
    last_user = messages.list.eval(
        pl.element().filter(pl.element().struct.field("role") == "user")
    ).list.last()
    if blocks:
        total = messages.list.eval(_block_bytes(pl.element().struct.field("content"))).list.sum()
        prompt = _block_text(last_user.struct.field("content"))
    else:
        total = messages.list.eval(
            pl.element().struct.field("content").str.len_bytes().cast(pl.Int64)
        ).list.sum()
        prompt = last_user.struct.field("content")
    return total, prompt


def _required(*names: str) -> list[tuple[pl.Expr, str]]:
    return [(_field(name).is_null(), f"#: required key [{name}] not found") for name in names]


def _min_one(name: str, value: pl.Expr) -> tuple[pl.Expr, str]:
    return value < 1, f"#/{name}: must be greater than or equal to 1"


def _features(
    df: pl.DataFrame,
    rules: list[tuple[pl.Expr, str]],
    prompt: pl.Expr | None = None,
    text_bytes: pl.Expr | None = None,
    max_tokens: pl.Expr | None = None,
    text: pl.Expr | None = None,
    dims: pl.Expr | None = None,
    normalize: pl.Expr | None = None,
    tool: pl.Expr | None = None,
    tools: pl.Expr | None = None,
) -> pl.DataFrame:
    error: pl.Expr = pl.lit(None, pl.String)
    for condition, message in reversed(
        [
            (_MI.is_null(), "#: required key [modelInput] not found"),
            (_field("modelId").is_not_null(), "#: extraneous key [modelId] is not permitted"),
            *rules,
        ]
    ):
        error = pl.when(condition).then(pl.lit(message)).otherwise(error)
    columns = {
        "prompt": prompt,
        "text_bytes": text_bytes,
        "max_tokens": max_tokens,
        "error": error,
        "text": text,
        "dims": dims,
        "normalize": normalize,
        "tool": tool,
        "tools": tools,
    }
    return df.select(
        pl.col("recordId").alias("record_id"),
        *[
            (expr if expr is not None else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in ((n, FEATURES[n]) for n in FEATURES)
            for expr in [columns[name]]
        ],
    )


def _forced_tool_rules(forced: pl.Expr, names: pl.Expr, where: str) -> list[tuple[pl.Expr, str]]:
    """A forced tool must be named and be one of the tools given."""
    listed = names.list.contains(forced.fill_null("")).fill_null(False)
    return [
        (forced.is_not_null() & ~listed, f"#/{where}: the forced tool is not one of the tools given"),
    ]


def _claude(content_blocks: bool, system_blocks: bool) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def features(df: pl.DataFrame) -> pl.DataFrame:
        messages = _field("messages")
        total, prompt = _chat(messages, content_blocks)
        system = _block_bytes(_field("system")) if system_blocks else _field("system").str.len_bytes()
        choice = _field("tool_choice")
        forced = pl.when(choice.struct.field("type") == "tool").then(choice.struct.field("name"))
        names = _field("tools").list.eval(pl.element().struct.field("name"))
        return _features(
            df,
            [
                *_required("anthropic_version", "max_tokens", "messages"),
                (messages.list.len() == 0, "#/messages: expected minimum item count: 1, found: 0"),
                _min_one("max_tokens", _field("max_tokens")),
                (
                    (choice.struct.field("type") == "tool") & choice.struct.field("name").is_null(),
                    "#/tool_choice: required key [name] not found",
                ),
                *_forced_tool_rules(forced, names, "tool_choice/name"),
            ],
            prompt=prompt,
            text_bytes=system.cast(pl.Int64).fill_null(0) + total.fill_null(0),
            max_tokens=_field("max_tokens"),
            tool=forced,
            tools=_field("tools").list.len(),
        )

    return features


def _nova_like(default_max: int) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def features(df: pl.DataFrame) -> pl.DataFrame:
        messages = _field("messages")
        total, prompt = _chat(messages, True)
        max_tokens = _field("inferenceConfig").struct.field("maxTokens")
        config = _field("toolConfig")
        forced = config.struct.field("toolChoice").struct.field("tool").struct.field("name")
        specs = config.struct.field("tools")
        names = specs.list.eval(pl.element().struct.field("toolSpec").struct.field("name"))
        return _features(
            df,
            [
                *_required("messages"),
                (messages.list.len() == 0, "#/messages: expected minimum item count: 1, found: 0"),
                _min_one("inferenceConfig/maxTokens", max_tokens.fill_null(default_max)),
                *_forced_tool_rules(forced, names, "toolConfig/toolChoice/tool/name"),
            ],
            prompt=prompt,
            text_bytes=_block_bytes(_field("system")).fill_null(0) + total.fill_null(0),
            max_tokens=max_tokens.fill_null(default_max),
            tool=forced,
            tools=specs.list.len(),
        )

    return features


def _prompted(max_key: str, default_max: int) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def features(df: pl.DataFrame) -> pl.DataFrame:
        max_tokens = _field(max_key).fill_null(default_max)
        return _features(
            df,
            [*_required("prompt"), _min_one(max_key, max_tokens)],
            prompt=_field("prompt"),
            text_bytes=_field("prompt").str.len_bytes(),
            max_tokens=max_tokens,
        )

    return features


def _mistral_chat(df: pl.DataFrame) -> pl.DataFrame:
    messages = _field("messages")
    total, prompt = _chat(messages, False)
    max_tokens = _field("max_tokens").fill_null(512)
    return _features(
        df,
        [
            *_required("messages"),
            (messages.list.len() == 0, "#/messages: expected minimum item count: 1, found: 0"),
            _min_one("max_tokens", max_tokens),
        ],
        prompt=prompt,
        text_bytes=total,
        max_tokens=max_tokens,
    )


def _titan(df: pl.DataFrame) -> pl.DataFrame:
    dims = _field("dimensions").fill_null(1024)
    return _features(
        df,
        [
            *_required("inputText"),
            (_field("inputText").str.len_chars() == 0, "#/inputText: expected minLength: 1, actual: 0"),
            (
                ~dims.is_in(list(EMBEDDING_DIMENSIONS)),
                "#/dimensions: value is not one of the allowed values [256, 512, 1024]",
            ),
        ],
        text=_field("inputText"),
        text_bytes=_field("inputText").str.len_bytes(),
        dims=dims,
        normalize=_field("normalize").fill_null(True),
    )


@dataclass(frozen=True)
class InputShape:
    """One way a family's records may be laid out, and how to reduce it to features."""

    schema: pa.Schema
    features: Callable[[pl.DataFrame], pl.DataFrame]


_NAMED = pa.struct([("name", _S)])
# Tool definitions are decoded only as far as their names: the schema of the forced tool is read from the
# line itself (emulator/structured.py), as any JSON Schema can be there.
_TOOL_CONFIG = pa.struct(
    [("tools", pa.list_(pa.struct([("toolSpec", _NAMED)]))), ("toolChoice", pa.struct([("tool", _NAMED)]))]
)
_NOVA_FIELDS = [
    ("schemaVersion", _S),
    ("system", _PLAIN_BLOCKS),
    ("messages", _messages(_PLAIN_BLOCKS)),
    ("inferenceConfig", pa.struct([("maxTokens", pa.int64())])),
    ("toolConfig", _TOOL_CONFIG),
]
_CLAUDE_HEAD = [("anthropic_version", _S), ("max_tokens", pa.int64())]
_CLAUDE_TOOLS = [("tools", pa.list_(_NAMED)), ("tool_choice", pa.struct([("type", _S), ("name", _S)]))]

INPUT_SHAPES: dict[Family, tuple[InputShape, ...]] = {
    Family.CLAUDE: (
        InputShape(
            _record_schema([*_CLAUDE_HEAD, ("system", _S), ("messages", _messages(_TEXT_BLOCKS)), *_CLAUDE_TOOLS]),
            _claude(True, False),
        ),
        InputShape(
            _record_schema([*_CLAUDE_HEAD, ("system", _S), ("messages", _messages(_S)), *_CLAUDE_TOOLS]),
            _claude(False, False),
        ),
        InputShape(
            _record_schema(
                [*_CLAUDE_HEAD, ("system", _TEXT_BLOCKS), ("messages", _messages(_TEXT_BLOCKS)), *_CLAUDE_TOOLS]
            ),
            _claude(True, True),
        ),
    ),
    Family.NOVA: (InputShape(_record_schema(_NOVA_FIELDS), _nova_like(5000)),),
    Family.CONVERSE: (InputShape(_record_schema(_NOVA_FIELDS), _nova_like(4096)),),
    Family.LLAMA: (
        InputShape(
            _record_schema([("prompt", _S), ("max_gen_len", pa.int64())]), _prompted("max_gen_len", 512)
        ),
    ),
    Family.MISTRAL_PROMPT: (
        InputShape(
            _record_schema([("prompt", _S), ("max_tokens", pa.int64())]), _prompted("max_tokens", 512)
        ),
    ),
    Family.MISTRAL_CHAT: (
        InputShape(_record_schema([("messages", _messages(_S)), ("max_tokens", pa.int64())]), _mistral_chat),
    ),
    Family.TITAN_EMBED_V2: (
        InputShape(
            _record_schema([("inputText", _S), ("dimensions", pa.int64()), ("normalize", pa.bool_())]), _titan
        ),
    ),
}


# ---------------------------------------------------------------------------------------------- outputs
def _usage_struct(**fields: pl.Expr) -> pl.Expr:
    return pl.struct(*[expr.alias(name) for name, expr in fields.items()])


def _claude_output(model_name: str, content: pl.Expr | None = None, stop: pl.Expr | None = None) -> pl.Expr:
    if content is None:
        content = pl.concat_list(pl.struct(pl.lit("text").alias("type"), pl.col("reply").alias("text")))
    if stop is None:
        stop = pl.when(pl.col("truncated")).then(pl.lit("max_tokens")).otherwise(pl.lit("end_turn"))
    return pl.struct(
        pl.format("msg_bdrk_{}", pl.col("record_id").hash(seed=11).cast(pl.String).str.zfill(20)).alias("id"),
        pl.lit("message").alias("type"),
        pl.lit("assistant").alias("role"),
        pl.lit(model_name).alias("model"),
        content.alias("content"),
        stop.alias("stop_reason"),
        pl.lit(None, pl.String).alias("stop_sequence"),
        _usage_struct(input_tokens=pl.col("input_tokens"), output_tokens=pl.col("output_tokens")).alias(
            "usage"
        ),
    )


def _nova_output(content: pl.Expr | None = None, stop: pl.Expr | None = None) -> pl.Expr:
    if content is None:
        content = pl.concat_list(pl.struct(pl.col("reply").alias("text")))
    if stop is None:
        stop = pl.when(pl.col("truncated")).then(pl.lit("max_tokens")).otherwise(pl.lit("end_turn"))
    message = pl.struct(content.alias("content"), pl.lit("assistant").alias("role"))
    return pl.struct(
        pl.struct(message.alias("message")).alias("output"),
        stop.alias("stopReason"),
        _usage_struct(
            inputTokens=pl.col("input_tokens"),
            outputTokens=pl.col("output_tokens"),
            totalTokens=pl.col("input_tokens") + pl.col("output_tokens"),
        ).alias("usage"),
    )


def _stop(stop: str, length: str) -> pl.Expr:
    return pl.when(pl.col("truncated")).then(pl.lit(length)).otherwise(pl.lit(stop))


def _llama_output() -> pl.Expr:
    return pl.struct(
        pl.col("reply").alias("generation"),
        pl.col("input_tokens").alias("prompt_token_count"),
        pl.col("output_tokens").alias("generation_token_count"),
        _stop("stop", "length").alias("stop_reason"),
    )


def _mistral_prompt_output() -> pl.Expr:
    return pl.struct(
        pl.concat_list(
            pl.struct(pl.col("reply").alias("text"), _stop("stop", "length").alias("stop_reason"))
        ).alias("outputs")
    )


def _mistral_chat_output() -> pl.Expr:
    choice = pl.struct(
        pl.lit(0).alias("index"),
        pl.struct(pl.lit("assistant").alias("role"), pl.col("reply").alias("content")).alias("message"),
        _stop("stop", "length").alias("stop_reason"),
    )
    return pl.struct(pl.concat_list(choice).alias("choices"))


def _titan_output() -> pl.Expr:
    # The vector is encoded once and spliced twice: float formatting dominates the cost of embedding jobs.
    vector = pl.struct(pl.col("embedding").alias("e")).struct.json_encode().str.slice(5).str.strip_suffix("}")
    return pl.concat_str(
        pl.lit('{"embedding":'),
        vector,
        pl.lit(',"inputTextTokenCount":'),
        pl.col("input_tokens"),
        pl.lit(',"embeddingsByType":{"float":'),
        vector,
        pl.lit("}}"),
    )


TOOL_FAMILIES = (Family.CLAUDE, Family.NOVA, Family.CONVERSE)
# Where a line's tool definitions and the forced tool's JSON Schema are (`{name}`: the forced tool).
TOOL_PATHS: dict[Family, tuple[str, str]] = {
    Family.CLAUDE: ("$.modelInput.tools", "$.modelInput.tools[?(@.name=='{name}')].input_schema"),
    Family.NOVA: (
        "$.modelInput.toolConfig.tools",
        "$.modelInput.toolConfig.tools[?(@.toolSpec.name=='{name}')].toolSpec.inputSchema.json",
    ),
}
TOOL_PATHS[Family.CONVERSE] = TOOL_PATHS[Family.NOVA]


def tool_output_expr(family: Family, model_id: str) -> pl.Expr:
    """`modelOutput` JSON of a forced tool call (columns `tool`, `answer`, `plain`; emulator/structured.py)."""
    stop = pl.when(pl.col("plain")).then(pl.lit("end_turn")).otherwise(pl.lit("tool_use"))
    if family is Family.CLAUDE:
        name = model_key(model_id).split("anthropic.", 1)[-1].split("-v", 1)[0]
        encoded = _claude_output(name, pl.lit(PLACEHOLDER), stop).struct.json_encode()
        return splice(encoded, claude_content())
    encoded = _nova_output(pl.lit(PLACEHOLDER), stop).struct.json_encode()
    return splice(encoded, converse_content())


def output_expr(family: Family, model_id: str) -> pl.Expr:
    """The family's `modelOutput` JSON text, from reply/truncated/token (or embedding) columns."""
    if family is Family.CLAUDE:
        name = model_key(model_id).split("anthropic.", 1)[-1].split("-v", 1)[0]
        return _claude_output(name).struct.json_encode()
    if family in (Family.NOVA, Family.CONVERSE):
        return _nova_output().struct.json_encode()
    if family is Family.LLAMA:
        return _llama_output().struct.json_encode()
    if family is Family.MISTRAL_PROMPT:
        return _mistral_prompt_output().struct.json_encode()
    if family is Family.MISTRAL_CHAT:
        return _mistral_chat_output().struct.json_encode()
    return _titan_output()


def stop_reason_expr(family: Family) -> pl.Expr:
    if family is Family.TITAN_EMBED_V2:
        return pl.lit(None, pl.String)
    if family in (Family.LLAMA, Family.MISTRAL_PROMPT, Family.MISTRAL_CHAT):
        return _stop("stop", "length")
    return pl.when(pl.col("truncated")).then(pl.lit("max_tokens")).otherwise(pl.lit("end_turn"))


# ------------------------------------------------------------------------------------------- embeddings
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def embeddings(texts: pl.Series, dims: pl.Series, normalize: pl.Series, chunk: int = 4096) -> pl.Series:
    """Deterministic float32 vectors: value j of a text = splitmix64(hash(text) + (j+1)·φ) mapped to [-1, 1).

    Unit L2 norm (in float32) where `normalize` is true.
    """
    n = len(texts)
    hashes = texts.fill_null("").hash(seed=EMBEDDING_HASH_SEED).to_numpy()
    dims_np = dims.fill_null(1024).to_numpy()
    norm_np = normalize.fill_null(True).to_numpy()
    parts: list[pl.DataFrame] = []
    with np.errstate(over="ignore"):
        for d in np.unique(dims_np):
            rows = np.flatnonzero(dims_np == d)
            steps = (np.arange(1, int(d) + 1, dtype=np.uint64) * _GOLDEN)[None, :]
            for start in range(0, len(rows), chunk):
                idx = rows[start : start + chunk]
                bits = _splitmix(hashes[idx, None] + steps)
                values = (bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)
                flags = norm_np[idx]
                if flags.any():
                    values[flags] /= np.sqrt(np.einsum("ij,ij->i", values[flags], values[flags]))[:, None]
                parts.append(
                    pl.DataFrame(
                        {
                            "i": idx,
                            "embedding": pl.Series(values, dtype=pl.Array(pl.Float32, int(d))).cast(
                                pl.List(pl.Float32)
                            ),
                        }
                    )
                )
    if not parts:
        return pl.Series("embedding", [None] * n, dtype=pl.List(pl.Float32))
    return pl.concat(parts).sort("i")["embedding"]
