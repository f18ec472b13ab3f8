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
)

// AdminHandler serves the admin endpoints: /ready, /metrics, /clusters, /config_dump, the
// status page at /, and Go's profiler under /debug/pprof/. Safe for concurrent use.
func (s *Sidecar) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", s.serveReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{Registry: s.metrics.Registry}))
	mux.HandleFunc("GET /clusters", s.serveClusters)
	mux.HandleFunc("GET /config_dump", s.serveConfigDump)
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
	Name            string           `json:"name"`
	Policy          string           `json:"lb"`
	EndpointVersion string           `json:"endpoints_version"`
	Endpoints       []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is one endpoint in /clusters.
type EndpointStatus struct {
	Address        string `json:"address"`
	Weight         uint32 `json:"weight"`
	Health         string `json:"health"`
	ActiveRequests int64  `json:"active_requests"`
	TotalRequests  uint64 `json:"total_requests"`
	Failures       uint64 `json:"failures"`
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
		cs := ClusterStatus{Name: u.name, Policy: policy, EndpointVersion: box.version, Endpoints: []EndpointStatus{}}
		for _, e := range box.endpoints {
			cs.Endpoints = append(cs.Endpoints, EndpointStatus{
				Address: e.Address, Weight: e.Weight, Health: "healthy",
				ActiveRequests: e.State.Active.Load(), TotalRequests: e.State.Total.Load(), Failures: e.State.Failures.Load(),
			})
		}
		out = append(out, cs)
	}
	slices.SortFunc(out, func(a, b ClusterStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
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

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Ferry — {{.Service}}</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:18px} table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:left} th{background:#e8eef4}
.healthy{background:#d8f0d8} .unhealthy,.ejected{background:#f4d0d0} .muted{color:#777}
</style></head><body>
<h1>Ferry sidecar for <b>{{.Service}}</b></h1>
<p>{{if .Ready}}<b>ready</b>{{else}}<b style="color:#b00">not ready</b>: {{.Why}}{{end}}
 · config version <code>{{.Version}}</code> applied {{.Applied}} · <a href="/config_dump">config_dump</a>
 · <a href="/clusters">clusters</a> · <a href="/metrics">metrics</a></p>
{{range .Clusters}}
<h2>{{.Name}} <span class="muted">({{.Policy}}, endpoints {{.EndpointVersion}})</span></h2>
<table><tr><th>endpoint</th><th>weight</th><th>health</th><th>active</th><th>requests</th><th>failures</th></tr>
{{range .Endpoints}}<tr class="{{.Health}}"><td>{{.Address}}</td><td>{{.Weight}}</td><td>{{.Health}}</td><td>{{.ActiveRequests}}</td><td>{{.TotalRequests}}</td><td>{{.Failures}}</td></tr>
{{else}}<tr><td colspan="6" class="muted">no endpoints</td></tr>{{end}}
</table>{{end}}
</body></html>`))

func (s *Sidecar) serveStatusPage(w http.ResponseWriter, _ *http.Request) {
	ok, why := s.Ready()
	data := struct {
		Service, Version, Applied, Why string
		Ready                          bool
		Clusters                       []ClusterStatus
	}{Ready: ok, Why: why, Clusters: s.Clusters()}
	if sn := s.snap.Load(); sn != nil {
		data.Service, data.Version, data.Applied = sn.cfg.Service, sn.cfg.Version, sn.applied.UTC().Format(time.RFC3339)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = statusPage.Execute(w, data)
}
