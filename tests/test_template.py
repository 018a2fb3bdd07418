"""template.yaml and its nested stack, read as CloudFormation reads them: the values built from
intrinsic functions are evaluated here, since `sam validate --lint` checks types, not values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]


def load(path: str) -> Any:
    template, errors = decode_str((ROOT / path).read_text())
    assert not errors, errors
    return template


NO_VALUE = object()


def evaluate(node: Any, refs: dict[str, Any], conditions: dict[str, bool] | None = None) -> Any:
    """Enough of CloudFormation's intrinsic functions for what the templates build. A reference to a
    resource (or a parameter not in ``refs``) becomes ``<Name>``, an attribute ``<Name.Attribute>``."""
    conditions = conditions or {}
    if isinstance(node, dict) and len(node) == 1:
        ((fn, arg),) = node.items()
        if fn == "Ref":
            return NO_VALUE if arg == "AWS::NoValue" else refs.get(arg, f"<{arg}>")
        if fn == "Fn::GetAtt":
            return f"<{arg if isinstance(arg, str) else '.'.join(arg)}>"
        if fn == "Fn::If":
            return evaluate(arg[1] if conditions[arg[0]] else arg[2], refs, conditions)
        if fn == "Fn::Select":
            return evaluate(arg[1], refs, conditions)[int(arg[0])]
        if fn == "Fn::Split":
            return evaluate(arg[1], refs, conditions).split(arg[0])
        if fn == "Fn::Join":
            return arg[0].join(evaluate(arg[1], refs, conditions))
        if fn == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            values = {k: evaluate(v, refs, conditions) for k, v in names.items()}
            return re.sub(
                r"\$\{([^}!]+)\}",
                lambda m: str(values[m[1]]) if m[1] in values else str(refs.get(m[1], f"<{m[1]}>")),
                text,
            )
    if isinstance(node, dict):
        done = {k: evaluate(v, refs, conditions) for k, v in node.items()}
        return {k: v for k, v in done.items() if v is not NO_VALUE}
    if isinstance(node, list):
        return [v for v in (evaluate(n, refs, conditions) for n in node) if v is not NO_VALUE]
    return node


@pytest.mark.parametrize(
    "stack_id",
    [
        "arn:aws:cloudformation:us-east-1:123456789012:stack/qwen-rag/1c2d3e4f-5a6b-11ef-8c7d-0a1b2c3d4e5f",
        "arn:aws:cloudformation:ap-southeast-1:123456789012:stack/qwen-rag/ab12cd34-5a6b-11ef-8c7d-0a1b2c3d4e5f",
    ],
)
def test_collection_and_policy_names_are_valid_for_any_stack_id(stack_id):
    main, nested = load("template.yaml"), load("infra/opensearch-serverless.yaml")
    params = main["Resources"]["VectorCollection"]["Properties"]["Parameters"]
    name = evaluate(params["CollectionName"], {"AWS::StackId": stack_id})
    assert re.fullmatch(nested["Parameters"]["CollectionName"]["AllowedPattern"], name), name
    # AWS: collection names 3-32 chars, a lowercase letter first; security/access policy names 3-32 chars
    assert re.fullmatch(r"[a-z][a-z0-9-]{2,31}", name)
    refs = {"CollectionName": name}
    for res in nested["Resources"].values():
        if res["Type"].startswith("AWS::OpenSearchServerless::") and "Policy" in res["Type"]:
            policy_name = evaluate(res["Properties"]["Name"], refs)
            assert re.fullmatch(r"[a-z][a-z0-9-]{2,31}", policy_name), policy_name


def test_standby_replicas_reach_the_collection():
    main, nested = load("template.yaml"), load("infra/opensearch-serverless.yaml")
    passed = main["Resources"]["VectorCollection"]["Properties"]["Parameters"]["StandbyReplicas"]
    assert passed == {"Ref": "CollectionStandbyReplicas"}
    assert main["Parameters"]["CollectionStandbyReplicas"]["AllowedValues"] == ["ENABLED", "DISABLED"]
    assert nested["Resources"]["Collection"]["Properties"]["StandbyReplicas"] == {"Ref": "StandbyReplicas"}


def test_the_chat_failure_alarm_watches_the_metric_the_app_emits():
    main = load("template.yaml")
    alarm = main["Resources"]["ChatFailuresAlarm"]["Properties"]
    env = main["Globals"]["Function"]["Environment"]["Variables"]
    chat_env = main["Resources"]["ChatFunction"]["Properties"]["Environment"]["Variables"]
    assert alarm["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
    assert alarm["MetricName"] == "ChatFailed"  # the name chat.service emits
    assert alarm["Dimensions"] == [{"Name": "service", "Value": chat_env["POWERTOOLS_SERVICE_NAME"]}]


# Lambda Web Adapter v1.1.0 (the first with SnapStart hooks) is layer version 30 on both architectures
# (aws/aws-lambda-web-adapter examples/fastapi-snapstart-zip/README.md; PR #871).
ADAPTER_LAYER = re.compile(r"arn:aws:lambda:eu-west-1:753240598075:layer:LambdaAdapterLayer(X86|Arm64):(\d+)$")


def _translated(snapstart: str) -> dict[str, Any]:
    """The template as SAM's transform expands it (what CloudFormation deploys)."""
    from samtranslator.translator.transform import transform  # type: ignore[import-untyped]

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    template = load("template.yaml")
    for res in template["Resources"].values():  # where `sam package` would put S3 locations
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Application":
            props["Location"] = "https://s3.amazonaws.com/bucket/nested.yaml"
        for field in ("CodeUri", "ContentUri"):
            if field in props:
                props[field] = "s3://bucket/code.zip"
    return transform(template, {"ChatSnapStart": snapstart}, NoManagedPolicies())  # type: ignore[no-any-return]


@pytest.mark.parametrize("on", [True, False])
def test_chat_snapstart_is_opt_in_and_wires_the_adapter_hooks(on, monkeypatch):
    main = load("template.yaml")
    assert main["Parameters"]["ChatSnapStart"]["Default"] == "false"
    assert main["Conditions"]["ChatSnapStartOn"] == {"Fn::Equals": [{"Ref": "ChatSnapStart"}, "true"]}
    fn = main["Resources"]["ChatFunction"]["Properties"]
    conditions = {"ChatSnapStartOn": on, "IsArm": True}
    assert evaluate(fn["SnapStart"], {}, conditions) == {"ApplyOn": "PublishedVersions" if on else "None"}
    variables = fn["Environment"]["Variables"]
    hooks = {k: evaluate(v, {}, conditions) for k, v in variables.items() if k.startswith("AWS_LWA_SNAPSTART_")}
    hooks = {k: v for k, v in hooks.items() if v is not NO_VALUE}
    expected = {"AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH", "AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"}
    assert set(hooks) == (expected if on else set())
    # the paths the app serves them on are the ones the adapter calls (chat.snapstart reads the same variables)
    from chat.snapstart import AFTER_ENV, BEFORE_ENV, HookPaths

    for name, value in hooks.items():
        monkeypatch.setenv(name, value)
    paths = HookPaths.from_env()
    assert {BEFORE_ENV, AFTER_ENV} == expected
    assert (paths.before, paths.after) == ((hooks[BEFORE_ENV], hooks[AFTER_ENV]) if on else (None, None))
    assert not any(p in ("/", "/health") for p in hooks.values())
    # the adapter layer is v1.1.0 or later on both architectures
    layers = [evaluate(fn["Layers"][0], {"AWS::Region": "eu-west-1"}, {"IsArm": arm}) for arm in (True, False)]
    found = [ADAPTER_LAYER.match(layer) for layer in layers]
    assert all(found), layers
    assert {m.group(1) for m in found if m} == {"Arm64", "X86"}
    assert all(int(m.group(2)) >= 30 for m in found if m)


@pytest.mark.parametrize("snapstart", ["true", "false"])
def test_the_function_url_is_on_the_published_alias(snapstart, monkeypatch):
    """SnapStart applies to published versions only: SAM publishes one per deployment and points the
    alias and the function URL at it, whether SnapStart is on or not (so switching keeps the URL)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resources = _translated(snapstart)["Resources"]
    url = resources["ChatFunctionUrl"]["Properties"]
    assert url["TargetFunctionArn"] == {"Ref": "ChatFunctionAliaslive"}
    assert url["InvokeMode"] == "RESPONSE_STREAM"
    alias = resources["ChatFunctionAliaslive"]["Properties"]
    version = alias["FunctionVersion"]["Fn::GetAtt"][0]
    assert resources[version]["Type"] == "AWS::Lambda::Version"
    assert resources["ChatFunction"]["Properties"]["SnapStart"] == {
        "ApplyOn": {"Fn::If": ["ChatSnapStartOn", "PublishedVersions", "None"]}
    }
