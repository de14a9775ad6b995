# sluice guide mesh: the policy the front proxy asks about every request (Rego v0 syntax).
#
# Reads are open to everyone. Writes (POST) must arrive over TLS: the front proxy's 8443
# listener sets the ":scheme" pseudo-header to "https". An allowed request gets an extra
# upstream header, x-current-user: OPA, which the demo service prints in its greeting.
package envoy.authz

import input.attributes.request.http as req

default allow = false

granted := {"allowed": true, "headers": {"x-current-user": "OPA"}}

allow = granted {
    req.method == "GET"
}

allow = granted {
    req.method == "POST"
    req.headers[":scheme"] == "https"
}
