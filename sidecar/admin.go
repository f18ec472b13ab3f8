package sidecar

import (
	"encoding/json"
	"html/template"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
)

// AdminHandler serves the admin endpoints: /ready, /metrics, /clusters, /config_dump, the
// status page at /, and Go's profiler under /debug/pprof/. Safe for concurrent use.
func (s *Sidecar) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", s.serveReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{Registry: s.metrics.Registry}))
	mux.HandleFunc("GET /clusters", s.serveClusters)
	mux.HandleFunc("GET /config_dump", s.serveConfigDump)
	mux.HandleFunc("GET /certs", s.serveCerts)
	mux.HandleFunc("GET /{$}", s.serveStatusPage)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func (s *Sidecar) serveReady(w http.ResponseWriter, _ *http.Request) {
	ok, why := s.Ready()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write([]byte(why + "\n"))
}

// ClusterStatus is one upstream in /clusters.
type ClusterStatus struct {
	Name            string `json:"name"`
	Policy          string `json:"lb"`
	EndpointVersion string `json:"endpoints_version"`
	// Available counts the endpoints that take traffic (neither ejected nor unhealthy).
	Available int `json:"available_endpoints"`
	// Panic is true while too few endpoints are available and traffic goes to all of them.
	Panic bool `json:"panic"`
	// CircuitBreaker is what is in flight against the upstream's limits.
	CircuitBreaker CircuitStatus `json:"circuit_breaker"`
	// Discovery is where the endpoints come from and, for Consul, how fresh they are.
	Discovery *DiscoveryStatus `json:"discovery,omitempty"`
	Endpoints []EndpointStatus `json:"endpoints"`
}

// CircuitStatus is an upstream's circuit breaker in /clusters: what is in flight, and the
// limits (0: none).
type CircuitStatus struct {
	InFlight       circuit.Stats `json:"in_flight"`
	MaxConnections int64         `json:"max_connections"`
	MaxPending     int64         `json:"max_pending"`
	MaxRequests    int64         `json:"max_requests"`
	MaxRetries     int64         `json:"max_retries"`
}

// EndpointStatus is one endpoint in /clusters: the one health model every part of Ferry
// reads.
type EndpointStatus struct {
	Address string `json:"address"`
	Weight  uint32 `json:"weight"`
	// Status sums it up: "available", "ejected" or "unhealthy".
	Status string `json:"status"`
	// Health is the active health check's verdict: "healthy", "unhealthy", "unknown" (no
	// verdict yet) or "unchecked" (no active checks configured).
	Health       string     `json:"health"`
	HealthDetail string     `json:"health_detail,omitempty"`
	HealthSince  *time.Time `json:"health_since,omitempty"`
	// Outlier is outlier detection's state: "ok", "ejected", or "off" (not configured).
	Outlier      string     `json:"outlier"`
	Ejections    uint64     `json:"ejections"`
	EjectedAt    *time.Time `json:"ejected_at,omitempty"`
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	// Reason is why the endpoint is (or was last) ejected, e.g. "consecutive_5xx: 5 in a row".
	Reason string `json:"reason,omitempty"`
	// SuccessRate is the share of successful calls over the last outlier detection
	// interval; absent when there were none.
	SuccessRate    *float64 `json:"success_rate,omitempty"`
	IntervalCalls  uint64   `json:"interval_calls"`
	ActiveRequests int64    `json:"active_requests"`
	TotalRequests  uint64   `json:"total_requests"`
	Failures       uint64   `json:"failures"`
}

// Clusters returns the state of every upstream, sorted by name.
func (s *Sidecar) Clusters() []ClusterStatus {
	s.mu.Lock()
	ups := make([]*upstream, 0, len(s.upstreams))
	for _, u := range s.upstreams {
		ups = append(ups, u)
	}
	s.mu.Unlock()
	out := make([]ClusterStatus, 0, len(ups))
	for _, u := range ups {
		u.mu.Lock()
		policy := u.policy
		u.mu.Unlock()
		box := u.picker.Load()
		l := u.breaker.Limits()
		cs := ClusterStatus{Name: u.name, Policy: policy, EndpointVersion: box.version, Endpoints: []EndpointStatus{},
			Available: box.sel.Available, Panic: box.sel.Panic,
			CircuitBreaker: CircuitStatus{InFlight: u.breaker.Stats(), MaxConnections: l.MaxConnections,
				MaxPending: l.MaxPending, MaxRequests: l.MaxRequests, MaxRetries: l.MaxRetries}}
		cs.Discovery = s.discoveryStatus(u.name, u.ready())
		for _, e := range box.endpoints {
			cs.Endpoints = append(cs.Endpoints, endpointStatus(e))
		}
		out = append(out, cs)
	}
	slices.SortFunc(out, func(a, b ClusterStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// endpointStatus reads one endpoint's published state.
func endpointStatus(e *balancer.Endpoint) EndpointStatus {
	st := e.State
	es := EndpointStatus{Address: e.Address, Weight: e.Weight, Status: "available", Health: "unchecked", Outlier: "off",
		ActiveRequests: st.Active.Load(), TotalRequests: st.Total.Load(), Failures: st.Failures.Load()}
	if h := st.HealthStatus(); h != nil {
		es.Health, es.HealthDetail = h.Health.String(), h.Detail
		if !h.Since.IsZero() {
			since := h.Since.UTC()
			es.HealthSince = &since
		}
		if h.Health == balancer.HealthUnhealthy {
			es.Status = "unhealthy"
		}
	}
	if o := st.OutlierStatus(); o != nil {
		es.Outlier, es.Ejections, es.Reason, es.IntervalCalls = "ok", o.Ejections, o.Reason, o.Calls
		if o.Ejected {
			es.Outlier, es.Status = "ejected", "ejected"
		}
		if !o.EjectedAt.IsZero() {
			at, until := o.EjectedAt.UTC(), o.Until.UTC()
			es.EjectedAt, es.EjectedUntil = &at, &until
		}
		if o.SuccessRate >= 0 {
			sr := o.SuccessRate
			es.SuccessRate = &sr
		}
	}
	return es
}

func (s *Sidecar) serveClusters(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]any{"upstreams": s.Clusters()})
}

func (s *Sidecar) serveConfigDump(w http.ResponseWriter, _ *http.Request) {
	sn := s.snap.Load()
	if sn == nil {
		http.Error(w, "no config applied", http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, map[string]any{
		"version":    sn.cfg.Version,
		"file":       sn.cfg.File,
		"applied_at": sn.applied.UTC().Format(time.RFC3339Nano),
		"config":     sn.cfg,
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"percent": func(f *float64) float64 { return 100 * *f },
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Ferry — {{.Service}}</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:18px} table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:left} th{background:#e8eef4}
.available{background:#d8f0d8} .unhealthy,.ejected{background:#f4d0d0} .muted{color:#777} .panic{color:#b00;font-weight:bold}
</style></head><body>
<h1>Ferry sidecar for <b>{{.Service}}</b></h1>
<p>{{if .Ready}}<b>ready</b>{{else}}<b style="color:#b00">not ready</b>: {{.Why}}{{end}}
 · config version <code>{{.Version}}</code> applied {{.Applied}} · <a href="/config_dump">config_dump</a>
 · <a href="/clusters">clusters</a> · <a href="/metrics">metrics</a></p>
{{range .Clusters}}
<h2>{{.Name}} <span class="muted">({{.Policy}}, endpoints {{.EndpointVersion}}, {{.Available}} available)</span>{{if .Panic}} <span class="panic">panic mode</span>{{end}}{{with .Discovery}}{{if eq .Source "consul"}} <span class="muted">· Consul service {{.Service}}{{if not .Ready}}, waiting for its first answer{{end}}</span>{{if .StaleSince}} <span class="panic">Consul unreachable since {{.StaleSince.Format "15:04:05"}}: serving the last known endpoints</span>{{end}}{{end}}{{end}}</h2>
<p class="muted">in flight: {{.CircuitBreaker.InFlight.Requests}} requests, {{.CircuitBreaker.InFlight.Connections}} connections, {{.CircuitBreaker.InFlight.Pending}} pending, {{.CircuitBreaker.InFlight.Retries}} retrying</p>
<table><tr><th>endpoint</th><th>weight</th><th>status</th><th>health check</th><th>outlier</th><th>ejections</th><th>ejected until</th><th>reason</th><th>success rate</th><th>active</th><th>requests</th><th>failures</th></tr>
{{range .Endpoints}}<tr class="{{.Status}}"><td>{{.Address}}</td><td>{{.Weight}}</td><td>{{.Status}}</td><td title="{{.HealthDetail}}">{{.Health}}</td><td>{{.Outlier}}</td><td>{{.Ejections}}</td><td>{{if .EjectedUntil}}{{.EjectedUntil.Format "15:04:05.000"}}{{end}}</td><td>{{.Reason}}</td><td>{{if .SuccessRate}}{{printf "%.1f%%" (percent .SuccessRate)}}{{end}}</td><td>{{.ActiveRequests}}</td><td>{{.TotalRequests}}</td><td>{{.Failures}}</td></tr>
{{else}}<tr><td colspan="12" class="muted">no endpoints</td></tr>{{end}}
</table>{{end}}
{{if .Ingress}}<h2>ingress</h2>
<table><tr><th>listener</th><th>certificate</th><th>DNS names</th><th>subject</th><th>serial</th><th>not after</th><th>file</th><th>reload error</th></tr>
{{range .Ingress}}<tr><td>{{.Listener}}</td><td>{{if .Default}}default{{else}}by SNI{{end}}</td><td>{{range $i, $n := .DNSNames}}{{if $i}}, {{end}}{{$n}}{{end}}</td><td>{{.Subject}}</td><td>{{.Serial}}</td><td>{{.NotAfter}}</td><td>{{.CertFile}}</td><td>{{.Error}}</td></tr>
{{end}}</table>{{end}}
{{range .Routes}}
<h2>routes of {{.Listener}}</h2>
<table><tr><th>route</th><th>match</th><th>action</th><th>options</th></tr>
{{range .Routes}}<tr><td>{{.Name}}</td><td>{{.Match}}</td><td>{{.Action}}</td><td>{{.Options}}</td></tr>
{{end}}</table>{{end}}
</body></html>`))

func (s *Sidecar) serveStatusPage(w http.ResponseWriter, _ *http.Request) {
	ok, why := s.Ready()
	data := struct {
		Service, Version, Applied, Why string
		Ready                          bool
		Clusters                       []ClusterStatus
		Ingress                        []IngressCertInfo
		Routes                         []listenerRoutes
	}{Ready: ok, Why: why, Clusters: s.Clusters(), Ingress: s.IngressCerts()}
	if sn := s.snap.Load(); sn != nil {
		data.Service, data.Version, data.Applied = sn.cfg.Service, sn.cfg.Version, sn.applied.UTC().Format(time.RFC3339)
		data.Routes = statusRoutes(sn.cfg)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = statusPage.Execute(w, data)
}
