"""What `gigabatch run` and `gigabatch estimate` take, declared once (see batch/options.py):
the command line builds its Click options from these tables, and `batch.run`/`batch.estimate`
check their keyword arguments against them. The job kinds' options come from the registry.
"""

from __future__ import annotations

from pathlib import Path

from batch.options import Option

# Connection and credentials: None leaves the `GIGACHAT_*` variable in force.
API_OPTIONS = (
    Option("--base-url", "API base URL [env GIGACHAT_BASE_URL].", show_default=False),
    Option("--auth-url", "OAuth URL [env GIGACHAT_AUTH_URL].", show_default=False),
    Option(
        "--credentials",
        "Authorization key, base64 [env GIGACHAT_CREDENTIALS]. Prefer the variable: "
        "options show up in the process list.",
        show_default=False,
    ),
    Option(
        "--scope",
        "GIGACHAT_API_PERS, GIGACHAT_API_B2B or GIGACHAT_API_CORP [env GIGACHAT_SCOPE].",
        show_default=False,
    ),
    Option("--user", "User for password auth [env GIGACHAT_USER].", show_default=False),
    Option("--password", "Password [env GIGACHAT_PASSWORD].", show_default=False),
    Option(
        "--access-token", "A ready access token [env GIGACHAT_ACCESS_TOKEN].", show_default=False
    ),
    Option(
        "--cert-file",
        "Client certificate for mTLS [env GIGACHAT_CERT_FILE].",
        path="file",
        show_default=False,
    ),
    Option(
        "--key-file",
        "Client private key for mTLS [env GIGACHAT_KEY_FILE].",
        path="file",
        show_default=False,
    ),
    Option(
        "--key-file-password",
        "Password of the private key [env GIGACHAT_KEY_FILE_PASSWORD].",
        show_default=False,
    ),
    Option(
        "--ca-bundle-file",
        "CA bundle to verify the server with, e.g. the Russian Trusted Root CA "
        "[env GIGACHAT_CA_BUNDLE_FILE].",
        path="file",
        show_default=False,
    ),
    Option(
        "--verify-ssl/--no-verify-ssl",
        "Verify the server's TLS certificate (default on) [env GIGACHAT_VERIFY_SSL_CERTS].",
        dest="verify_ssl_certs",
        type=bool,
        show_default=False,
    ),
    Option(
        "--timeout",
        "Seconds one request may take in all: connect, send and the whole answer "
        "(default 90; then it is retried) [env GIGACHAT_TIMEOUT].",
        type=float,
        show_default=False,
        minimum=0,
        min_open=True,
    ),
)
API_OPTION_NAMES = tuple(o.field for o in API_OPTIONS)

MAX_CONCURRENCY = Option(
    "--max-concurrency",
    "Ceiling on requests in flight; the run finds the server's limit below it.",
    type=int,
    default=16,
    minimum=1,
)

BATCHES_OPTIONS = (
    Option(
        "--mode",
        "online: a request per batch of jobs; batches: GigaChat's batch API (files of "
        "tasks answered server-side, without holding streams).",
        default="online",
        choices=("online", "batches"),
    ),
    Option(
        "--batch-lines",
        "Batches: task lines per uploaded file (the API allows 500).",
        type=int,
        default=500,
        minimum=1,
        maximum=500,
    ),
    Option(
        "--batch-bytes",
        "Batches: most bytes per uploaded file (undocumented by GigaChat).",
        type=int,
        default=20 * 1024 * 1024,
        minimum=1,
    ),
    Option(
        "--completion-window",
        "Batches: seconds after which a batch still not completed fails its jobs.",
        type=float,
        default=24 * 3600.0,
        minimum=0,
        min_open=True,
    ),
    Option(
        "--completion-timeout",
        "Batches: seconds this run waits; then it stops (exit 1) and a rerun resumes.",
        type=float,
        default=24 * 3600.0,
        minimum=0,
    ),
    Option(
        "--poll-interval",
        "Batches: first wait between status polls; it grows x1.5 up to --poll-max.",
        type=float,
        default=2.0,
        minimum=0,
        min_open=True,
    ),
    Option(
        "--poll-max",
        "Batches: longest wait between status polls.",
        type=float,
        default=60.0,
        minimum=0,
        min_open=True,
    ),
)

PRICES = Option(
    "--prices",
    "Price table JSON (default: the built-in one).",
    type=Path,
    path="existing_file",
)
KEEP_COLUMNS = Option(
    "--keep-columns",
    "Input columns to copy, with their types, into results/ and failed/: a,b (repeatable) "
    "or '*' for every column that is not a job field. One named like an output column is "
    "stored as input_<name>.",
    multiple=True,
    metavar="COLS",
)
EMULATOR = Option(
    "--emulator",
    "Talk to a local emulator started in-process, with your GIGACHAT_MODEL and "
    "GIGACHAT_SCOPE (a rehearsal of the real run).",
    switch=True,
    default=False,
)
# The answer cache, shared by `run` and `estimate`.
ANSWER_CACHE = (
    Option(
        "--cache/--no-cache",
        "Reuse answers from the answer cache and add new ones to it. Default: on for "
        "embeddings, off for chat (a sampled answer is reused only when you say so).",
        dest="cache",
        show_default=False,
    ),
    Option(
        "--cache-dir",
        "The answer cache's directory [env GIGABATCH_CACHE_DIR; default: the user "
        "cache directory, e.g. ~/.cache/gigabatch].",
        type=Path,
        path="dir",
    ),
)
CHANGED_SINCE = Option(
    "--changed-since",
    "Write only rows whose id is new or whose answer changed since this earlier output, "
    "and the ids it had that the input lost (OUT/removed/).",
    type=Path,
    path="existing_dir",
)
# The local directory of an --out URI's lock, journal and event log (batch/output_uri.py).
STATE_DIR = Option(
    "--state-dir",
    "With an --out URI (s3://, gs://, file://...): the local directory for what needs a "
    "POSIX filesystem (the run lock, the answer journal, the event log). Default: one per "
    "URI under the user cache directory.",
    type=Path,
    path="dir",
)
# A Ray cluster to run on (batch/cluster/).
RAY_OPTIONS = (
    Option(
        "--ray",
        "Run on a Ray cluster: 'local' starts one here, 'auto' or host:port joins one "
        "(pip install 'gigabatch[ray]'). One coordinator shares the stream limit, the "
        "Retry-After pause and the token; the output is written here as usual.",
        metavar="local|auto|ADDRESS",
    ),
    Option(
        "--ray-workers",
        "With --ray: worker actors (default: one per CPU of the cluster).",
        type=int,
        minimum=1,
    ),
)
EMULATOR_PROFILE = Option(
    "--emulator-profile",
    "Emulator profile for --emulator: pers, b2b, corp, storm, flaky, fast.",
    default="b2b",
)
EMULATOR_OPTION = Option(
    "--emulator-option",
    "An emulator knob for --emulator (e.g. stream_limit=4); repeatable.",
    dest="emulator_knobs",
    multiple=True,
    metavar="KEY=VALUE",
)
# In the Python API: a text bar (tqdm) in a notebook or a terminal, nothing elsewhere.
PROGRESS = Option(
    "--progress",
    "Progress: auto (a text bar when interactive, else none), bar, log or off.",
    default="auto",
    choices=("auto", "bar", "log", "off"),
    surface="api",
)

# `gigabatch run`'s own options, in --help order (the kind's options and the connection's
# come from KIND/the registry and API_OPTIONS).
RUN_OPTIONS = (
    KEEP_COLUMNS,
    MAX_CONCURRENCY,
    Option(
        "--max-attempts",
        "Sends per request for 5xx, resets and timeouts (429s wait instead and don't count).",
        type=int,
        default=5,
        minimum=1,
    ),
    Option(
        "--max-elapsed",
        "Seconds after which a request's retries (429s included) give up; each try is "
        "bounded by --timeout.",
        type=float,
        default=300.0,
        minimum=0,
        min_open=True,
    ),
    Option(
        "--max-outage",
        "Seconds the API may stay unreachable (the run pauses, probing) before the run "
        "stops with exit 1; a resume continues.",
        type=float,
        default=900.0,
        minimum=0,
        min_open=True,
    ),
    Option(
        "--max-retry-after",
        "Longest Retry-After pause to honour; a longer one stops the run (exit 1) so it "
        "can be run again later.",
        type=float,
        default=120.0,
        minimum=0,
    ),
    Option(
        "--flush-interval",
        "Seconds between committed parts: the most answered work a crash can lose.",
        type=float,
        default=2.0,
        minimum=0,
        min_open=True,
    ),
    Option(
        "--grace-period",
        "On Ctrl-C/SIGTERM/fatal errors, seconds to let requests in flight finish.",
        type=float,
        default=5.0,
        minimum=0,
    ),
    Option(
        "--disk-wait",
        "On a full disk, seconds to keep the answered rows and retry committing them "
        "while space is freed.",
        type=float,
        default=600.0,
        minimum=0,
    ),
    Option(
        "--skip-invalid",
        "Run the valid jobs, list the rest in invalid.jsonl.",
        switch=True,
        default=False,
    ),
    Option(
        "--restart",
        "Delete the output directory's previous run first.",
        switch=True,
        default=False,
    ),
    Option("--retry-failed", "Send the jobs in failed/ again.", switch=True, default=False),
    PRICES,
    Option("--max-cost", "Budget in RUB.", type=float, minimum=0),
    Option(
        "--max-tokens",
        "Budget in billed tokens (not the answers' length: see --max-completion-tokens).",
        dest="max_tokens_budget",
        type=int,
        minimum=0,
    ),
    Option(
        "--quiet",
        "No progress and no summary (errors still show).",
        short="-q",
        switch=True,
        default=False,
    ),
    EMULATOR,
    EMULATOR_PROFILE,
    EMULATOR_OPTION,
    *ANSWER_CACHE,
    CHANGED_SINCE,
    STATE_DIR,
    *RAY_OPTIONS,
    PROGRESS,
)

# `gigabatch estimate`'s own options, in --help order.
ESTIMATE_OPTIONS = (
    KEEP_COLUMNS,
    Option(
        "--prices",
        "Price table JSON overriding the built-in one (rubles per 1M tokens per model).",
        dest="prices_path",
        type=Path,
        path="existing_file",
    ),
    Option(
        "--sample",
        "Answer N random chat jobs for real to project output tokens with an interval.",
        type=int,
        minimum=1,
    ),
    Option("--seed", "Seed for choosing the sample (reproducible estimates).", type=int),
    Option(
        "--confidence",
        "Confidence level of the output interval.",
        type=float,
        default=0.95,
        minimum=0.5,
        maximum=1.0,
        min_open=True,
        max_open=True,
    ),
    Option(
        "--out",
        "Keep the sampled answers here, as a run checkpoint: `gigabatch run` with the "
        "same --out and settings does not pay for them again. A local directory.",
        type=str,  # not a Path: an s3:// URI would fold into a local s3:/ directory
        metavar="DIR",
    ),
    Option(
        "--json",
        "Print JSON instead of a table.",
        dest="as_json",
        switch=True,
        default=False,
        surface="cli",
    ),
    Option(
        "--offline",
        "No credentials, no requests: approximate input tokens from characters.",
        switch=True,
        default=False,
    ),
    EMULATOR,
    EMULATOR_PROFILE,
    EMULATOR_OPTION,
    *ANSWER_CACHE,
    MAX_CONCURRENCY,
    Option(
        "--message-overhead",
        "Tokens billed per chat message beyond its content (default: the kind's measured "
        "3; calibrate from one answer's prompt_tokens).",
        type=int,
        minimum=0,
    ),
    Option(
        "--skip-invalid",
        "Leave invalid lines out instead of stopping.",
        switch=True,
        default=False,
    ),
    Option("--quiet", "No progress on stderr.", short="-q", switch=True, default=False),
    Option(
        "--mode",
        "batches: price with the price table's batch prices (where it has them).",
        default="online",
        choices=("online", "batches"),
    ),
)
