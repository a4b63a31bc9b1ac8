"""cluster.yaml through the config preparation `ray up` runs for AWS, with AWS played by moto.

`ray up` prepares a config with `ray.autoscaler._private.commands._bootstrap_config`:
`prepare_config`, `validate_config`, then the AWS provider's `bootstrap_aws` (IAM profile, key
pair, subnets, security group). That is run here as is, against moto's in-process AWS (its
default VPC and subnets), and the requests Ray would send are read off botocore's event hooks.
Ray's own security group gets SSH (22) from 0.0.0.0/0 plus all traffic from the group itself,
and whatever `provider.security_group.IpPermissions` holds is appended to that same
AuthorizeSecurityGroupIngress request, so a rule repeating Ray's is a duplicate that AWS
refuses. No Ray cluster, nothing reaches a real cloud.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
REGION = "us-west-2"
WORLD_SSH = ("tcp", 22, 22, ("cidr", "0.0.0.0/0"))
# The rule cluster.yaml carried before: Ray's own SSH rule, repeated.
OLD_RULE = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
WATCHED = ("AuthorizeSecurityGroupIngress", "CreateSecurityGroup")


def _shipped() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _grants(permissions: list[dict]) -> list[tuple]:
    """Each (protocol, from port, to port, source) the permissions grant, one per source: what AWS
    compares when it refuses a rule as a duplicate. All protocols (-1) means all ports."""
    out = []
    for p in permissions:
        protocol = str(p["IpProtocol"])
        ports = (None, None) if protocol == "-1" else (p.get("FromPort"), p.get("ToPort"))
        key = (protocol, *ports)
        out += [key + (("cidr", r["CidrIp"]),) for r in p.get("IpRanges", [])]
        out += [key + (("cidr6", r["CidrIpv6"]),) for r in p.get("Ipv6Ranges", [])]
        out += [key + (("prefix-list", r["PrefixListId"]),) for r in p.get("PrefixListIds", [])]
        out += [key + (("group", g["GroupId"]),) for g in p.get("UserIdGroupPairs", [])]
    return out


@pytest.fixture
def aws(tmp_path, monkeypatch):
    """moto's AWS in us-west-2 with fake credentials; a HOME of its own (Ray writes the key pair it
    creates to ~/.ssh); every request named in WATCHED recorded as Ray's boto3 calls build it."""
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.aws import node_provider, utils

    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2",
                 "AWS_ENDPOINT_URL_IAM", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("HOME", str(tmp_path))

    def clear_caches():
        utils.resource_cache.cache_clear()
        utils.client_cache.cache_clear()
        aws_config._get_subnets_or_die.cache_clear()

    with mock_aws():
        session = boto3.Session(region_name=REGION)
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)  # boto3.resource(), Ray's way in
        clear_caches()
        sent = {op: [] for op in WATCHED}
        for op, seen in sent.items():
            session.events.register(f"before-parameter-build.ec2.{op}",
                                    lambda params, seen=seen, **_: seen.append(copy.deepcopy(params)))
        # Ray waits 15 s after creating IAM objects, for AWS to propagate them.
        monkeypatch.setattr(aws_config, "time", SimpleNamespace(sleep=lambda seconds: None))
        # Ray lists every instance type of the region to fill in `resources` (cluster.yaml gives
        # them): ~1400 in moto, 4 s; the ones cluster.yaml names are all it reads.
        ours = sorted({t["node_config"]["InstanceType"] for t in _shipped()["available_node_types"].values()})
        monkeypatch.setattr(node_provider, "list_ec2_instances", lambda region, aws_credentials=None: (
            session.client("ec2").describe_instance_types(InstanceTypes=ours)["InstanceTypes"]))
        # An account where `ray up` has run before: Ray's instance profile and role exist (moto has
        # no AWS-managed policies for Ray to attach to a new role).
        iam = session.client("iam")
        iam.create_role(RoleName="ray-autoscaler-v1", AssumeRolePolicyDocument="{}")
        iam.create_instance_profile(InstanceProfileName="ray-autoscaler-v1")
        iam.add_role_to_instance_profile(InstanceProfileName="ray-autoscaler-v1", RoleName="ray-autoscaler-v1")
        try:
            yield SimpleNamespace(ec2=session.client("ec2"), sent=sent)
        finally:
            clear_caches()


def _ray_up_bootstrap(config: dict) -> dict:
    """The config `ray up` would launch nodes with (no config cache, as `--no-config-cache`)."""
    from ray.autoscaler._private.commands import _bootstrap_config

    return _bootstrap_config(copy.deepcopy(config), no_config_cache=True)


def _group(ec2, **filters) -> list[dict]:
    found = ec2.describe_security_groups(Filters=[{"Name": k, "Values": [v]} for k, v in filters.items()])
    return found["SecurityGroups"]


def test_ray_up_opens_ssh_and_the_group_to_itself_once_each(aws):
    config = _shipped()
    resolved = _ray_up_bootstrap(config)

    created = aws.sent["CreateSecurityGroup"]
    assert [c["GroupName"] for c in created] == [config["provider"]["security_group"]["GroupName"]] == [
        "palimpsest-ray"]
    (group,) = _group(aws.ec2, **{"group-name": "palimpsest-ray"})
    sg = group["GroupId"]
    for name, node_type in resolved["available_node_types"].items():
        assert node_type["node_config"]["SecurityGroupIds"] == [sg], name

    # One ingress request, for Ray's group: no grant in it twice (AWS would refuse the request).
    (request,) = aws.sent["AuthorizeSecurityGroupIngress"]
    assert request["GroupId"] == sg
    grants = _grants(request["IpPermissions"])
    assert not [g for g, n in Counter(grants).items() if n > 1], request["IpPermissions"]
    # Open to outside the group: SSH only (Ray's rule); the group itself: everything; nothing else.
    assert [g for g in grants if g[3] != ("group", sg)] == [WORLD_SSH]
    assert sorted(grants, key=str) == sorted([WORLD_SSH, ("-1", None, None, ("group", sg))], key=str)
    # And that is what the group holds afterwards.
    assert sorted(_grants(group["IpPermissions"]), key=str) == sorted(grants, key=str)


def test_the_check_catches_the_rule_the_old_cluster_yaml_repeated(aws):
    config = _shipped()
    config["provider"]["security_group"]["IpPermissions"] = [copy.deepcopy(OLD_RULE)]

    with pytest.raises(ClientError) as refused:
        _ray_up_bootstrap(config)
    assert refused.value.response["Error"]["Code"] == "InvalidPermission.Duplicate"
    (request,) = aws.sent["AuthorizeSecurityGroupIngress"]
    assert Counter(_grants(request["IpPermissions"]))[WORLD_SSH] == 2


def _own_group(ec2, cidr: str) -> str:
    """The recipe in cluster.yaml's Security comment: SSH from one address, all traffic in-group."""
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    sg = ec2.create_security_group(GroupName="palimpsest-own", Description="palimpsest ray cluster",
                                   VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": cidr}]}])
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg}]}])
    return sg


def _with_own_group(sg: str, node_types: set[str] | None = None) -> dict:
    """cluster.yaml with its commented `SecurityGroupIds` line uncommented (in the node types named,
    or in all), holding sg."""
    text, types, current = [], set(), None
    for line in CLUSTER_YAML.read_text().splitlines():
        top = re.match(r"^  (\w+):\s*$", line)
        current = top.group(1) if top else current
        uncommented = re.sub(r"^(\s+)# (SecurityGroupIds: )\[sg-[0-9a-f]+\]", rf"\1\2[{sg}]", line)
        if uncommented != line and (node_types is None or current in node_types):
            types.add(current)
            line = uncommented
        text.append(line)
    config = yaml.safe_load("\n".join(text))
    assert types == (node_types or set(config["available_node_types"])), types
    return config


def test_own_security_group_in_every_node_config_means_ray_opens_nothing(aws):
    sg = _own_group(aws.ec2, "203.0.113.7/32")
    for seen in aws.sent.values():
        seen.clear()  # the recipe's own requests
    resolved = _ray_up_bootstrap(_with_own_group(sg))

    assert aws.sent == {op: [] for op in WATCHED}  # no group created, no rule added
    assert not _group(aws.ec2, **{"group-name": "palimpsest-ray"})
    vpc = _group(aws.ec2, **{"group-id": sg})[0]["VpcId"]
    subnets = {s["SubnetId"]: s for s in aws.ec2.describe_subnets()["Subnets"]}
    for name, node_type in resolved["available_node_types"].items():
        assert node_type["node_config"]["SecurityGroupIds"] == [sg], name
        assert {subnets[s]["VpcId"] for s in node_type["node_config"]["SubnetIds"]} == {vpc}, name
    (group,) = _group(aws.ec2, **{"group-id": sg})
    assert sorted(_grants(group["IpPermissions"]), key=str) == sorted(
        [("tcp", 22, 22, ("cidr", "203.0.113.7/32")), ("-1", None, None, ("group", sg))], key=str)


def test_own_security_group_on_the_head_alone_leaves_the_workers_open_to_ssh_from_anywhere(aws):
    """Why the Security comment says every node_config: a node type without SecurityGroupIds gets
    Ray's group, with its SSH rule for 0.0.0.0/0."""
    sg = _own_group(aws.ec2, "203.0.113.7/32")
    for seen in aws.sent.values():
        seen.clear()
    config = _with_own_group(sg, {_shipped()["head_node_type"]})
    resolved = _ray_up_bootstrap(config)

    (ray_group,) = _group(aws.ec2, **{"group-name": "palimpsest-ray"})
    workers = [t for name, t in resolved["available_node_types"].items() if name != resolved["head_node_type"]]
    assert workers and all(t["node_config"]["SecurityGroupIds"] == [ray_group["GroupId"]] for t in workers)
    assert WORLD_SSH in _grants(ray_group["IpPermissions"])
