#!/usr/bin/env python3
"""Generate crates/config/src/envoy_fields.rs: for each config struct of sluice-config that
mirrors an Envoy message, the names of all of that message's fields in Envoy's API.

The deserializer uses the table to tell a field Envoy has but sluice does not model ("recognised
but not supported by sluice") from a misspelt one ("unknown field").

    python3 crates/config/tests/envoy_fields/generate.py [PROTO_ROOT]

PROTO_ROOT is the `envoy` folder of Envoy's data-plane API protos; by default the copy shipped in
the `envoy-types` crate of the local cargo registry. Re-run after adding a config struct.
"""
import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CRATE = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(CRATE, "src", "envoy_fields.rs")

# Rust struct name -> Envoy message (package-relative nested name or full name) where the short
# names differ or are ambiguous.
OVERRIDES = {
    "Bootstrap": "envoy.config.bootstrap.v3.Bootstrap",
    "StaticResources": "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
    "Admin": "envoy.config.bootstrap.v3.Admin",
    "CommonHttpProtocolOptions": "envoy.config.core.v3.HttpProtocolOptions",
    "UpstreamHttpProtocolOptions": "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "UpstreamHttpOptions": "envoy.config.core.v3.UpstreamHttpProtocolOptions",
    "ExplicitHttpConfig": "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
    "UseDownstreamHttpConfig": "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig",
    "NetworkFilter": "envoy.config.listener.v3.Filter",
    "HttpFilter": "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    "UpgradeConfig": "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
    "HttpConnectionManager": "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "Router": "envoy.extensions.filters.http.router.v3.Router",
    "RouteConfiguration": "envoy.config.route.v3.RouteConfiguration",
    "VirtualHost": "envoy.config.route.v3.VirtualHost",
    "Route": "envoy.config.route.v3.Route",
    "RouteMatch": "envoy.config.route.v3.RouteMatch",
    "RouteAction": "envoy.config.route.v3.RouteAction",
    "RedirectAction": "envoy.config.route.v3.RedirectAction",
    "DirectResponseAction": "envoy.config.route.v3.DirectResponseAction",
    "WeightedCluster": "envoy.config.route.v3.WeightedCluster",
    "ClusterWeight": "envoy.config.route.v3.WeightedCluster.ClusterWeight",
    "HashPolicy": "envoy.config.route.v3.RouteAction.HashPolicy",
    "HashHeader": "envoy.config.route.v3.RouteAction.HashPolicy.Header",
    "HashCookie": "envoy.config.route.v3.RouteAction.HashPolicy.Cookie",
    "HashConnectionProperties": "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
    "HashQueryParameter": "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter",
    "GrpcRouteMatchOptions": "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions",
    "HeaderMatcher": "envoy.config.route.v3.HeaderMatcher",
    "RetryPolicy": "envoy.config.route.v3.RetryPolicy",
    "RetryBackOff": "envoy.config.route.v3.RetryPolicy.RetryBackOff",
    "RetryHostPredicate": "envoy.config.route.v3.RetryPolicy.RetryHostPredicate",
    "RateLimitedRetryBackOff": "envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff",
    "ResetHeader": "envoy.config.route.v3.RetryPolicy.ResetHeader",
    "RetryBudget": "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget",
    "LoadAssignmentPolicy": "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy",
    "TcpKeepalive": "envoy.config.core.v3.TcpKeepalive",
    "UpstreamConnectionOptions": "envoy.config.cluster.v3.UpstreamConnectionOptions",
    "PreviousHostsPredicate": "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "QueryParameterMatcher": "envoy.config.route.v3.QueryParameterMatcher",
    "Int64Range": "envoy.type.v3.Int64Range",
    "RegexMatchAndSubstitute": "envoy.type.matcher.v3.RegexMatchAndSubstitute",
    "RegexMatcher": "envoy.type.matcher.v3.RegexMatcher",
    "StringMatcher": "envoy.type.matcher.v3.StringMatcher",
    "ListStringMatcher": "envoy.type.matcher.v3.ListStringMatcher",
    "HealthCheck": "envoy.config.core.v3.HealthCheck",
    "HealthCheckFilter": "envoy.extensions.filters.http.health_check.v3.HealthCheck",
    "OutlierDetection": "envoy.config.cluster.v3.OutlierDetection",
    "Percent": "envoy.type.v3.Percent",
    "HttpStatus": "envoy.type.v3.HttpStatus",
    "Cluster": "envoy.config.cluster.v3.Cluster",
    "RefreshRate": "envoy.config.cluster.v3.Cluster.RefreshRate",
    "RingHashLbConfig": "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
    "MaglevLbConfig": "envoy.config.cluster.v3.Cluster.MaglevLbConfig",
    "LeastRequestLbConfig": "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
    "RoundRobinLbConfig": "envoy.config.cluster.v3.Cluster.RoundRobinLbConfig",
    "CircuitBreakers": "envoy.config.cluster.v3.CircuitBreakers",
    "Thresholds": "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
    "ClusterLoadAssignment": "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "LocalityLbEndpoints": "envoy.config.endpoint.v3.LocalityLbEndpoints",
    "LbEndpoint": "envoy.config.endpoint.v3.LbEndpoint",
    "Endpoint": "envoy.config.endpoint.v3.Endpoint",
    "Listener": "envoy.config.listener.v3.Listener",
    "FilterChain": "envoy.config.listener.v3.FilterChain",
    "FilterChainMatch": "envoy.config.listener.v3.FilterChainMatch",
    "ListenerFilter": "envoy.config.listener.v3.ListenerFilter",
    "TransportSocket": "envoy.config.core.v3.TransportSocket",
    "DownstreamTlsContext": "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "UpstreamTlsContext": "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "CommonTlsContext": "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
    "TlsParameters": "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
    "TlsCertificate": "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
    "CertificateValidationContext": "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
    "ExtAuthz": "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    "ExtAuthzPerRoute": "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
    "CheckSettings": "envoy.extensions.filters.http.ext_authz.v3.CheckSettings",
    "BufferSettings": "envoy.extensions.filters.http.ext_authz.v3.BufferSettings",
    "HttpService": "envoy.extensions.filters.http.ext_authz.v3.HttpService",
    "AuthorizationRequest": "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest",
    "AuthorizationResponse": "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse",
    "GrpcService": "envoy.config.core.v3.GrpcService",
    "EnvoyGrpc": "envoy.config.core.v3.GrpcService.EnvoyGrpc",
    "HttpUri": "envoy.config.core.v3.HttpUri",
    "DataSource": "envoy.config.core.v3.DataSource",
    "Address": "envoy.config.core.v3.Address",
    "SocketAddress": "envoy.config.core.v3.SocketAddress",
    "HeaderValue": "envoy.config.core.v3.HeaderValue",
    "HeaderValueOption": "envoy.config.core.v3.HeaderValueOption",
    "Locality": "envoy.config.core.v3.Locality",
    "Node": "envoy.config.core.v3.Node",
    "Metadata": "envoy.config.core.v3.Metadata",
    "Http1ProtocolOptions": "envoy.config.core.v3.Http1ProtocolOptions",
    "Http2ProtocolOptions": "envoy.config.core.v3.Http2ProtocolOptions",
    "KeepaliveSettings": "envoy.config.core.v3.KeepaliveSettings",
    "TypedExtensionConfig": "envoy.config.core.v3.TypedExtensionConfig",
    "LayeredRuntime": "envoy.config.bootstrap.v3.LayeredRuntime",
    "RuntimeLayer": "envoy.config.bootstrap.v3.RuntimeLayer",
    "CaresDnsResolverConfig": "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
    "GetAddrInfoDnsResolverConfig": "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig",
    "DnsResolverOptions": "envoy.config.core.v3.DnsResolverOptions",
}


# Rust enum name -> Envoy enum (full name) for the enums whose short names differ or repeat.
ENUM_OVERRIDES = {
    "SocketProtocol": "envoy.config.core.v3.SocketAddress.Protocol",
    "HeaderAppendAction": "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction",
    "HeadersWithUnderscoresAction": "envoy.config.core.v3.HttpProtocolOptions.HeadersWithUnderscoresAction",
    "CodecType": "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.CodecType",
    "ServerHeaderTransformation": "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.ServerHeaderTransformation",
    "TrafficDirection": "envoy.config.core.v3.TrafficDirection",
    "DiscoveryType": "envoy.config.cluster.v3.Cluster.DiscoveryType",
    "LbPolicy": "envoy.config.cluster.v3.Cluster.LbPolicy",
    "DnsLookupFamily": "envoy.config.cluster.v3.Cluster.DnsLookupFamily",
    "RoutingPriority": "envoy.config.core.v3.RoutingPriority",
    "RingHashFunction": "envoy.config.cluster.v3.Cluster.RingHashLbConfig.HashFunction",
    "HealthStatus": "envoy.config.core.v3.HealthStatus",
    "ResetHeaderFormat": "envoy.config.route.v3.RetryPolicy.ResetHeaderFormat",
    "TlsRequirementType": "envoy.config.route.v3.VirtualHost.TlsRequirementType",
    "ClusterNotFoundResponseCode": "envoy.config.route.v3.RouteAction.ClusterNotFoundResponseCode",
    "RedirectResponseCode": "envoy.config.route.v3.RedirectAction.RedirectResponseCode",
    "ApiVersion": "envoy.config.core.v3.ApiVersion",
    "TlsProtocol": "envoy.extensions.transport_sockets.tls.v3.TlsParameters.TlsProtocol",
    "TrustChainVerification": "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext.TrustChainVerification",
}


def default_root():
    found = sorted(glob.glob(os.path.expanduser(
        "~/.cargo/registry/src/*/envoy-types-*/proto/data-plane-api/envoy")))
    if not found:
        sys.exit("no envoy-types crate in the cargo registry; pass PROTO_ROOT")
    return found[-1]


def parse_protos(root):
    """Full message name -> list of field names (oneof members included)."""
    messages = {}
    enums = {}
    for path in glob.glob(os.path.join(root, "**", "*.proto"), recursive=True):
        text = open(path, encoding="utf-8").read()
        text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
        text = re.sub(r"//[^\n]*", " ", text)
        text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
        package = re.search(r"\bpackage\s+([\w.]+)\s*;", text)
        package = package.group(1) if package else ""
        stack = []  # (kind, name)
        statement = ""
        square = 0
        for ch in text:
            if ch == "[":
                square += 1
            elif ch == "]":
                square -= 1
            if square > 0 or ch not in "{};":
                statement += ch
                continue
            head = " ".join(statement.split())
            statement = ""
            if ch == "{":
                m = re.match(r"(message|enum|oneof|service|extend)\s+([\w.]+)$", head)
                if m:
                    stack.append((m.group(1), m.group(2)))
                else:
                    stack.append(("other", head))
                if stack[-1][0] == "message":
                    names = [n for k, n in stack if k == "message"]
                    messages.setdefault(".".join([package] + names), [])
                if stack[-1][0] == "enum":
                    names = [n for k, n in stack if k in ("message", "enum")]
                    enums.setdefault(".".join([package] + names), [])
            elif ch == "}":
                if stack:
                    stack.pop()
            elif ch == ";":
                kinds = [k for k, _ in stack]
                if kinds and kinds[-1] == "enum":
                    m = re.match(r"(\w+)\s*=\s*(-?\d+)", head)
                    if m and m.group(1) not in ("option", "reserved"):
                        names = [n for k, n in stack if k in ("message", "enum")]
                        enums[".".join([package] + names)].append((m.group(1), int(m.group(2))))
                    continue
                if not kinds or kinds[-1] not in ("message", "oneof") or "other" in kinds \
                        or "enum" in kinds:
                    continue
                m = re.match(
                    r"(?:repeated\s+|optional\s+)?(?:map\s*<[^>]*>|[\w.]+)\s+(\w+)\s*=\s*\d+", head)
                if m and not head.startswith(("reserved", "option", "extensions")):
                    names = [n for k, n in stack if k == "message"]
                    messages.setdefault(".".join([package] + names), []).append(m.group(1))
    return messages, enums


def rust_structs():
    names = []
    for path in sorted(glob.glob(os.path.join(CRATE, "src", "*.rs"))):
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"#\[derive\(([^)]*)\)\][^{;]*?pub struct (\w+)", text, re.S):
            if "Deserialize" in m.group(1):
                names.append(m.group(2))
    return sorted(set(names))


def rust_enums():
    names = []
    for path in sorted(glob.glob(os.path.join(CRATE, "src", "*.rs"))):
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"#\[derive\(([^)]*)\)\][^{;]*?pub enum (\w+)", text, re.S):
            if "Deserialize" in m.group(1) and "typed_enum" not in text[max(0, m.start() - 40):m.start()]:
                names.append(m.group(2))
    return sorted(set(names))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else default_root()
    messages, enums = parse_protos(root)
    rows, missing = [], []
    for name in rust_structs():
        full = OVERRIDES.get(name)
        if full is None:
            candidates = [m for m in messages if m.rsplit(".", 1)[-1] == name]
            full = candidates[0] if len(candidates) == 1 else None
        if full is None or full not in messages:
            missing.append(name)
            continue
        rows.append((name, full, sorted(set(messages[full]))))
    out = [
        "//! Generated by `crates/config/tests/envoy_fields/generate.py` from Envoy's API protos: for",
        "//! each config struct that mirrors an Envoy message, every field of that message. The",
        "//! deserializer tells a field Envoy has but sluice does not model (\"recognised but not",
        "//! supported by sluice\") from a misspelt one (\"unknown field\"). Do not edit by hand.",
        f"//! Structs without an Envoy message: {', '.join(missing) or 'none'}.",
        "",
        "/// (Rust struct name, Envoy message, the message's field names).",
        "pub(crate) const ENVOY_FIELDS: &[(&str, &str, &[&str])] = &[",
    ]
    for name, full, fields in rows:
        out.append(f'    ("{name}", "{full}", &[')
        line = "       "
        for f in fields:
            item = f' "{f}",'
            if len(line) + len(item) > 99:
                out.append(line)
                line = "       "
            line += item
        out.append(line)
        out.append("    ]),")
    out.append("];")
    enum_rows, enum_missing = [], []
    for name in rust_enums():
        full = ENUM_OVERRIDES.get(name)
        if full is None:
            candidates = [e for e in enums if e.rsplit(".", 1)[-1] == name]
            full = candidates[0] if len(candidates) == 1 else None
        if full is None or full not in enums:
            enum_missing.append(name)
            continue
        enum_rows.append((name, full, enums[full]))
    out += [
        "",
        "/// (Rust enum name, Envoy enum, its values with their numbers) for enums by number.",
        f"/// Enums without an Envoy enum: {', '.join(enum_missing) or 'none'}.",
        "pub(crate) type EnumValues = &'static [(&'static str, i64)];",
        "",
        "pub(crate) const ENVOY_ENUMS: &[(&str, &str, EnumValues)] = &[",
    ]
    for name, full, values in enum_rows:
        out.append(f'    ("{name}", "{full}", &[')
        line = "       "
        for v, n in values:
            item = f' ("{v}", {n}),'
            if len(line) + len(item) > 99:
                out.append(line)
                line = "       "
            line += item
        out.append(line)
        out.append("    ]),")
    out.append("];")
    missing += [f"enum {e}" for e in enum_missing]
    open(OUT, "w").write("\n".join(out) + "\n")
    print(f"{len(rows)} structs written to {OUT}; without an Envoy message: {missing}")


if __name__ == "__main__":
    main()
