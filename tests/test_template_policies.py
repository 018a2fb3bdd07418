"""The template's policies evaluated as AWS would read them, for every combination of the conditions
that change them: who may write to OpenSearch, who may use the alarm key, what expires, what a
stack delete keeps, and which parameter combinations the Rules refuse."""

from __future__ import annotations

import itertools
import json
from fnmatch import fnmatchcase
from typing import Any

import pytest

from tests.test_template import evaluate, load

MAIN = load("template.yaml")
NESTED = load("infra/opensearch-serverless.yaml")
RES = MAIN["Resources"]
INDEXER_ARN = "arn:aws:iam::123456789012:role/indexer"
CHAT_ARN = "arn:aws:iam::123456789012:role/chat"

# every combination of the conditions the IAM policies depend on
CONDITION_SETS = [
    dict(zip(("CreateCollection", "UseTokenAuth", "InVpc"), combo, strict=True))
    for combo in itertools.product([True, False], repeat=3)
]
REFS = {"AWS::Partition": "aws", "AWS::Region": "ap-southeast-1", "AWS::AccountId": "123456789012"}
REFS |= {"OpenSearchDomainName": "docs", "IndexName": "rag-chunks"}


def statements(role: str, conditions: dict[str, bool]) -> list[dict[str, Any]]:
    """Every Allow/Deny statement that applies to ``role``: its inline policies and attached AWS::IAM::Policy."""
    docs = [p["PolicyDocument"] for p in RES[role]["Properties"].get("Policies", [])]
    docs += [
        r["Properties"]["PolicyDocument"]
        for r in RES.values()
        if r["Type"] == "AWS::IAM::Policy" and {"Ref": role} in r["Properties"]["Roles"]
    ]
    found = []
    for doc in docs:
        stmts = evaluate(doc["Statement"], REFS, conditions)
        found += stmts if isinstance(stmts, list) else [stmts]
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allowed(role: str, conditions: dict[str, bool], service: str) -> list[tuple[str, str]]:
    """(action, resource) pairs the role is allowed for one service prefix (wildcards kept as written)."""
    pairs = []
    for st in statements(role, conditions):
        assert st["Effect"] == "Allow"
        for action in as_list(st["Action"]):
            if action == "*" or action.startswith(f"{service}:"):
                pairs += [(action, res) for res in as_list(st["Resource"])]
    return pairs


def grants(pairs: list[tuple[str, str]], action: str) -> bool:
    return any(fnmatchcase(action, pattern) for pattern, _ in pairs)


# --- OpenSearch: only the indexer writes ------------------------------------------------------------

ES_WRITES = ["es:ESHttpPut", "es:ESHttpDelete", "es:ESHttpPatch"]


@pytest.mark.parametrize("conditions", [c for c in CONDITION_SETS if not c["CreateCollection"]], ids=str)
def test_on_a_domain_the_chat_role_may_only_search_the_index(conditions):
    chat = allowed("ChatRole", conditions, "es")
    assert chat, "the chat role must be able to search"
    assert {action for action, _ in chat} <= {"es:ESHttpGet", "es:ESHttpPost"}
    assert not any(grants(chat, a) for a in ES_WRITES)
    # POST is a write on any path but a search one (_bulk, _doc, _update, _delete_by_query...)
    assert {res for _, res in chat} == {"arn:aws:es:ap-southeast-1:123456789012:domain/docs/rag-chunks/_search"}
    indexer = allowed("IndexerRole", conditions, "es")
    assert all(grants(indexer, a) for a in ["es:ESHttpPut", "es:ESHttpDelete", "es:ESHttpPost"])
    bulk = [(a, r) for a, r in indexer if r.endswith("domain/docs/_bulk")]
    assert bulk == [("es:ESHttpPost", "arn:aws:es:ap-southeast-1:123456789012:domain/docs/_bulk")]


def data_policy(reader: str, writer: str) -> list[dict[str, Any]]:
    """The collection's data access policy, as the nested stack renders it for these roles."""
    params = RES["VectorCollection"]["Properties"]["Parameters"]
    assert params["ReaderPrincipalArns"] == {"Fn::GetAtt": ["ChatRole", "Arn"]}
    assert params["WriterPrincipalArns"] == {"Fn::GetAtt": ["IndexerRole", "Arn"]}
    refs = {"CollectionName": "rag-abc", "ReaderPrincipalArns": [reader], "WriterPrincipalArns": [writer]}
    policy: list[dict[str, Any]] = json.loads(
        evaluate(NESTED["Resources"]["DataAccessPolicy"]["Properties"]["Policy"], refs)
    )
    return policy


def permissions_of(policy: list[dict[str, Any]], principal: str) -> set[str]:
    return {
        perm
        for entry in policy
        if principal in entry["Principal"]
        for rule in entry["Rules"]
        for perm in rule["Permission"]
    }


def test_on_serverless_the_chat_role_may_only_read_documents():
    policy = data_policy(CHAT_ARN, INDEXER_ARN)
    assert permissions_of(policy, CHAT_ARN) == {"aoss:ReadDocument", "aoss:DescribeIndex"}
    assert {"aoss:CreateIndex", "aoss:UpdateIndex", "aoss:WriteDocument"} <= permissions_of(policy, INDEXER_ARN)
    for entry in policy:  # no rule reaches beyond this collection
        for rule in entry["Rules"]:
            assert all(r.split("/")[1] == "rag-abc" for r in rule["Resource"]), rule
    # the IAM side only opens the data plane of this one collection; the data policy above narrows it
    for role in ("ChatRole", "IndexerRole"):
        pairs = allowed(role, {"CreateCollection": True, "UseTokenAuth": False, "InVpc": False}, "aoss")
        assert pairs == [("aoss:APIAccessAll", "<VectorCollection.Outputs.CollectionArn>")]


@pytest.mark.parametrize(
    ("endpoints", "public", "sources"),
    [
        ("", True, None),
        ("vpce-0a1b2c3d4e5f", False, ["vpce-0a1b2c3d4e5f"]),
        ("vpce-1a,vpce-2b", False, ["vpce-1a", "vpce-2b"]),
    ],
)
def test_the_collection_network_policy_is_vpc_only_when_endpoints_are_given(endpoints, public, sources):
    assert RES["VectorCollection"]["Properties"]["Parameters"]["VpcEndpointIds"] == {"Ref": "CollectionVpcEndpointIds"}
    node = NESTED["Resources"]["NetworkPolicy"]["Properties"]["Policy"]
    policy = json.loads(evaluate(node, {"CollectionName": "rag-abc", "VpcEndpointIds": endpoints}, {"Public": public}))
    assert policy[0]["AllowFromPublic"] is public
    assert policy[0].get("SourceVPCEs") == sources


# --- DynamoDB commit table ------------------------------------------------------------------------


def test_commit_table_shape_and_lifecycle():
    table = RES["CommitTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True


def function_env(name: str) -> dict[str, Any]:
    merged = dict(MAIN["Globals"]["Function"]["Environment"]["Variables"])
    merged |= RES[name]["Properties"].get("Environment", {}).get("Variables", {})
    return merged


@pytest.mark.parametrize("conditions", CONDITION_SETS, ids=str)
def test_commit_table_env_and_least_privilege(conditions):
    for fn in ("IndexerFunction", "ChatFunction"):
        assert function_env(fn)["COMMIT_TABLE"] == {"Ref": "CommitTable"}
    indexer = allowed("IndexerRole", conditions, "dynamodb")
    chat = allowed("ChatRole", conditions, "dynamodb")
    assert {r for _, r in indexer + chat} == {"<CommitTable.Arn>"}
    assert {a for a, _ in indexer} == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "dynamodb:Scan",
        "dynamodb:BatchGetItem",
        "dynamodb:ConditionCheckItem",
    }
    assert {a for a, _ in chat} == {"dynamodb:GetItem", "dynamodb:BatchGetItem"}


# --- alarms reach someone -------------------------------------------------------------------------


def test_cloudwatch_alarms_can_publish_to_the_encrypted_alarm_topic():
    topic = RES["AlarmTopic"]["Properties"]
    key_ref = topic["KmsMasterKeyId"]
    assert key_ref != "alias/aws/sns"  # its key policy cannot admit cloudwatch.amazonaws.com
    assert RES[key_ref["Ref"]]["Type"] == "AWS::KMS::Key"
    policy = evaluate(RES[key_ref["Ref"]]["Properties"]["KeyPolicy"], REFS)
    assert not [s for s in policy["Statement"] if s["Effect"] == "Deny"]
    cw = [
        s
        for s in policy["Statement"]
        if s["Effect"] == "Allow" and s["Principal"].get("Service") == "cloudwatch.amazonaws.com"
    ]
    # what SNS asks of a publisher on an encrypted topic: a data key, and decrypting it
    for needed in ("kms:GenerateDataKey", "kms:Decrypt"):
        assert any(fnmatchcase(needed, a) for s in cw for a in as_list(s["Action"])), needed
    assert all("Condition" not in s for s in cw), "a condition CloudWatch does not send would block it"
    alarms = [r for r in RES.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert len(alarms) >= 4
    assert all(a["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}] for a in alarms)


# --- what expires, what is kept -------------------------------------------------------------------

# RetentionInDays values CloudWatch Logs accepts (AWS::Logs::LogGroup reference)
LOG_RETENTION = {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731}
LOG_RETENTION |= {1096, 1827, 2192, 2557, 2922, 3288, 3653}


@pytest.mark.parametrize(("function", "role"), [("IndexerFunction", "IndexerRole"), ("ChatFunction", "ChatRole")])
def test_each_function_logs_to_a_group_with_retention(function, role):
    group = RES[function]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
    assert RES[group]["Type"] == "AWS::Logs::LogGroup"
    assert RES[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    param = MAIN["Parameters"]["LogRetentionDays"]
    assert set(param["AllowedValues"]) <= LOG_RETENTION and param["Default"] in param["AllowedValues"]
    logs = allowed(role, {"CreateCollection": True, "UseTokenAuth": True, "InVpc": False}, "logs")
    assert {r for _, r in logs} == {f"<{group}.Arn>"}


def test_noncurrent_document_versions_expire():
    rules = RES["DocumentsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = [r for r in rules if r["Status"] == "Enabled" and "NoncurrentVersionExpiration" in r]
    assert len(expiring) == 1 and "Prefix" not in expiring[0] and "Filter" not in expiring[0]
    assert expiring[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == {"Ref": "NoncurrentVersionExpirationDays"}
    assert MAIN["Parameters"]["NoncurrentVersionExpirationDays"]["MinValue"] >= 1


def test_stateful_resources_have_deliberate_deletion_policies():
    expected = {
        "DocumentsBucket": "Retain",  # the user's documents
        "IndexDeadLetterQueue": "Retain",  # the only record of files that failed
        "CommitTable": "Retain",
        "IndexQueue": "Delete",  # events for files still in the retained bucket
        "DashScopeApiKeySecret": "Delete",  # credentials do not outlive the deployment
        "ChatTokenSecret": "Delete",
    }
    for name, policy in expected.items():
        assert (RES[name].get("DeletionPolicy"), RES[name].get("UpdateReplacePolicy")) == (policy, policy), name
    dlq = RES["IndexDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == 1209600  # the SQS maximum, 14 days


def test_chat_concurrency_cap_is_a_parameter():
    fn = RES["ChatFunction"]["Properties"]
    assert fn["ReservedConcurrentExecutions"] == {
        "Fn::If": ["HasChatConcurrency", {"Ref": "ChatReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert MAIN["Parameters"]["ChatReservedConcurrency"]["Default"] == ""


def test_the_layer_follows_the_architecture():
    layer = RES["SharedLayer"]
    assert layer["Metadata"]["BuildArchitecture"] == {"Ref": "Architecture"}
    assert layer["Properties"]["CompatibleArchitectures"] == [{"Ref": "Architecture"}]
    assert MAIN["Globals"]["Function"]["Architectures"] == [{"Ref": "Architecture"}]


# --- parameter rules -----------------------------------------------------------------------------


def rule_value(node: Any, params: dict[str, str]) -> Any:
    """CloudFormation's rule-specific intrinsic functions, over parameter values (strings)."""
    if isinstance(node, dict) and len(node) == 1:
        ((fn, arg),) = node.items()
        if fn == "Ref":
            return params[arg]
        if fn == "Fn::Equals":
            return rule_value(arg[0], params) == rule_value(arg[1], params)
        if fn == "Fn::Not":
            return not rule_value(arg[0], params)
        if fn == "Fn::And":
            return all(rule_value(a, params) for a in arg)
        if fn == "Fn::Or":
            return any(rule_value(a, params) for a in arg)
        if fn == "Fn::Contains":
            return rule_value(arg[1], params) in arg[0]
        raise AssertionError(f"unsupported rule function {fn}")
    return node


def rules_accept(**given: str) -> bool:
    params = {name: str(p.get("Default", "")) for name, p in MAIN["Parameters"].items()} | given
    for name, p in MAIN["Parameters"].items():
        if "AllowedValues" in p and params[name] not in [str(v) for v in p["AllowedValues"]]:
            return False
    for rule in MAIN["Rules"].values():
        if "RuleCondition" in rule and not rule_value(rule["RuleCondition"], params):
            continue
        if not all(rule_value(a["Assert"], params) for a in rule["Assertions"]):
            return False
    return True


# Model Studio "OpenAI compatible - Embedding" page: dimensions per model and region
V4_DIMENSIONS = [2048, 1536, 1024, 768, 512, 256, 128, 64]


def test_embedding_defaults_are_offered_in_the_default_region():
    params = MAIN["Parameters"]
    assert params["EmbeddingModel"]["Default"] == "text-embedding-v4"
    assert params["EmbeddingDimensions"]["Default"] == 1024
    assert params["DashScopeRegion"]["Default"] == "ap-southeast-1"
    assert sorted(params["EmbeddingDimensions"]["AllowedValues"]) == sorted(V4_DIMENSIONS)
    assert rules_accept()


@pytest.mark.parametrize(
    ("model", "dims", "region", "ok"),
    [
        *[("text-embedding-v4", str(d), "ap-southeast-1", True) for d in V4_DIMENSIONS],
        ("text-embedding-v4", "1024", "cn-hongkong", True),
        ("text-embedding-v4", "2560", "ap-southeast-1", False),
        ("text-embedding-v3", "1024", "ap-southeast-1", True),
        ("text-embedding-v3", "512", "ap-southeast-1", True),
        ("text-embedding-v3", "1536", "ap-southeast-1", False),
        ("text-embedding-v3", "2048", "cn-beijing", False),
        ("text-embedding-v3", "256", "ap-southeast-1", False),  # 256/128/64: Beijing only
        ("text-embedding-v3", "256", "cn-beijing", True),
        ("text-embedding-v2", "1536", "ap-southeast-1", False),  # v1/v2: Beijing only
        ("text-embedding-v2", "1536", "cn-beijing", True),
        ("text-embedding-v1", "1024", "cn-beijing", False),
    ],
)
def test_rules_refuse_a_model_dimension_or_region_the_service_lacks(model, dims, region, ok):
    assert rules_accept(EmbeddingModel=model, EmbeddingDimensions=dims, DashScopeRegion=region) is ok


@pytest.mark.parametrize(
    ("endpoints", "subnets", "groups", "ok"),
    [
        ("", "", "", True),
        ("vpce-0a1b", "", "", False),  # VPC-only collection, functions outside the VPC
        ("vpce-0a1b", "subnet-1a,subnet-2b", "", False),
        ("vpce-0a1b", "subnet-1a,subnet-2b", "sg-0f", True),
        ("", "subnet-1a", "sg-0f", True),
    ],
)
def test_rules_keep_a_vpc_only_collection_reachable(endpoints, subnets, groups, ok):
    given = {"CollectionVpcEndpointIds": endpoints, "FunctionSubnetIds": subnets, "FunctionSecurityGroupIds": groups}
    assert rules_accept(**given) is ok
