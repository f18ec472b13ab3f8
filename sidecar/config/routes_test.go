package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/policy/route"
)

func TestParseRoutes(t *testing.T) {
	c, err := parse(t, `
service: web
inbound:
  address: 127.0.0.1:21000
  target: 127.0.0.1:8080
  routes:
    - {name: admin, match: {prefix: /admin/}, response: {status: 403, body: "no\n"}}
    - {name: to-api, match: {prefix: /via-api/}, upstream: api}
    - {name: local, match: {prefix: /v1/}, prefix_rewrite: /, timeout: 2s}
outbound:
  - address: 127.0.0.1:9191
    routes:
      - name: canary
        match: {prefix: /api/}
        split: [{upstream: api, weight: 80}, {upstream: api-v2, weight: 20}]
        request_headers: {set: {x-route: canary}}
        retries: {attempts: 2, on: [gateway-error]}
      - {name: old, match: {prefix: /old/}, redirect: {prefix_rewrite: /new/, code: 308}}
  - {upstream: api, address: 127.0.0.1:9192}
upstreams:
  - {name: api, endpoints: [127.0.0.1:8081]}
  - {name: api-v2, endpoints: [127.0.0.1:8082]}
`)
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"len(inbound.routes)", len(c.Inbound.Routes), 3},
		{"inbound.routes[2].prefix_rewrite", c.Inbound.Routes[2].PrefixRewrite, "/"},
		{"outbound[0].upstream", c.Outbound[0].Upstream, ""},
		{"outbound[0].routes[0].split[1].weight", c.Outbound[0].Routes[0].Split[1].Weight, uint32(20)},
		{"outbound[0].routes[0].request_headers.set[x-route]", c.Outbound[0].Routes[0].RequestHeaders.Set["x-route"], "canary"},
		{"outbound[0].routes[1].redirect.code", c.Outbound[0].Routes[1].Redirect.Code, 308},
		{"outbound[1].routes == nil", c.Outbound[1].Routes == nil, true},
	}
	for _, tc := range checks {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	// The inbound listener's routes compile with the local application as their default.
	tb, err := route.Compile(c.Inbound.Routes, RouteOptions(c, true))
	if err != nil {
		t.Fatalf("route.Compile(inbound.routes) error = %v", err)
	}
	if got := tb.Entry(2).Upstreams(); len(got) != 1 || got[0] != InboundTarget {
		t.Errorf("inbound.routes[2] Upstreams() = %v, want [%s]", got, InboundTarget)
	}
}

func TestRouteErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{
			name: "bad upstream names, regex and retry condition at their lines",
			doc: `
service: web
outbound:
  - address: 127.0.0.1:9191
    upstream: api
    routes:
      - {name: a, match: {prefix: /a/}, upstream: nope}
      - name: b
        match: {regex: "/b/[0-9+"}
        split:
          - {upstream: api, weight: 1}
          - {upstream: missing, weight: 1}
      - name: c
        upstream: api
        retries: {attempts: 11, on: [sometimes]}
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`,
			want: []string{
				`ferry.yaml:6: outbound[0].routes[0].upstream: unknown upstream "nope" (have api)`,
				`ferry.yaml:8: outbound[0].routes[1].match.regex: invalid regular expression`,
				`ferry.yaml:11: outbound[0].routes[1].split[1].upstream: unknown upstream "missing" (have api)`,
				`ferry.yaml:14: outbound[0].routes[2].retries.on[0]: unknown retry condition "sometimes" (want connect-failure,`,
				`ferry.yaml:14: outbound[0].routes[2].retries.attempts: must be from 0 to 10, got 11`,
			},
		},
		{
			name: "routes on a tcp listener",
			doc: `
service: web
inbound:
  address: 127.0.0.1:21000
  target: 127.0.0.1:5432
  protocol: tcp
  routes: [{match: {prefix: /}, response: {status: 200}}]
outbound:
  - address: 127.0.0.1:9191
    protocol: tcp
    upstream: db
    routes:
      - {upstream: db}
upstreams: [{name: db, endpoints: [127.0.0.1:8081]}]
`,
			want: []string{
				`ferry.yaml:6: inbound.routes: routes apply only to http listeners (protocol is tcp)`,
				`ferry.yaml:12: outbound[0].routes: routes apply only to http listeners (protocol is tcp)`,
			},
		},
		{
			name: "outbound without upstream needs routes",
			doc: `
service: web
outbound:
  - {address: 127.0.0.1:9191}
  - {address: 127.0.0.1:9192, protocol: tcp, routes: [{upstream: api}]}
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`,
			want: []string{
				`ferry.yaml:3: outbound[0].upstream: missing upstream`,
				`ferry.yaml:4: outbound[1].routes: routes apply only to http listeners`,
				`ferry.yaml:4: outbound[1].upstream: missing upstream`,
			},
		},
		{
			name: "outbound routes must name their action; header and rewrite problems",
			doc: `
service: web
outbound:
  - address: 127.0.0.1:9191
    routes:
      - {name: none, match: {prefix: /x/}}
      - name: hdr
        match: {path: /y}
        upstream: api
        prefix_rewrite: /z/
        request_headers:
          set: {"bad header": v, host: h}
      - {name: hdr, upstream: api, response_headers: {remove: [Connection]}}
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`,
			want: []string{
				`ferry.yaml:5: outbound[0].routes[0]: missing action`,
				`ferry.yaml:9: outbound[0].routes[1].prefix_rewrite: needs match.prefix`,
				`ferry.yaml:11: outbound[0].routes[1].request_headers.set."bad header": invalid header name`,
				`ferry.yaml:11: outbound[0].routes[1].request_headers.set.host: header Host cannot be changed`,
				`ferry.yaml:12: outbound[0].routes[2].response_headers.remove[0]: header Connection cannot be changed`,
				`ferry.yaml:12: outbound[0].routes[2].name: name "hdr" already used by routes[1]`,
			},
		},
		{
			name: "unknown and mistyped route keys",
			doc: `
service: web
outbound:
  - address: 127.0.0.1:9191
    routes:
      - {name: a, match: {prefx: /a/}, upstream: api}
      - {name: b, upstream: api, timeout: soon}
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`,
			want: []string{
				`ferry.yaml:5: outbound[0].routes[0].match.prefx: unknown key`,
				`ferry.yaml:6: outbound[0].routes[1].timeout: `,
			},
		},
		{
			name: "retriable-status-codes takes the upstream's codes",
			doc: `
service: web
inbound:
  address: 127.0.0.1:21000
  target: 127.0.0.1:8080
  routes:
    - {name: local, retries: {attempts: 1, on: [retriable-status-codes]}}
outbound:
  - address: 127.0.0.1:9191
    routes:
      - {name: r, upstream: api, retries: {attempts: 1, on: [retriable-status-codes]}}
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`,
			want: []string{
				`ferry.yaml:6: inbound.routes[0].retries.on: retriable-status-codes takes the codes of the upstream's retries, and the local application has none`,
				`ferry.yaml:10: outbound[0].routes[0].retries.on: retriable-status-codes takes the codes of the upstream's retries, and upstream "api" lists no retriable_status_codes`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.doc)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse() error = %v, want config.Errors", err)
			}
			if len(errs) != len(tc.want) {
				t.Fatalf("Parse() error =\n%v\nwant %d problems:\n%s", err, len(tc.want), strings.Join(tc.want, "\n"))
			}
			for i, e := range errs {
				if !strings.HasPrefix(e.Error(), tc.want[i]) {
					t.Errorf("error %d = %q, want prefix %q", i, e.Error(), tc.want[i])
				}
			}
		})
	}
}
