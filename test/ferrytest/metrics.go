package ferrytest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Sample is one line of Prometheus text exposition.
type Sample struct {
	// Name is the metric name, with any _bucket/_sum/_count suffix.
	Name string
	// Labels are the sample's labels.
	Labels map[string]string
	// Value is the sample's value.
	Value float64
}

// Metrics returns the samples of /metrics.
func (p *Process) Metrics() []Sample {
	p.t.Helper()
	c := NewClient(p.t, 16, nil)
	resp, err := c.Get(p.AdminURL("/metrics"))
	if err != nil {
		p.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		p.t.Fatalf("GET /metrics: status %d", resp.StatusCode)
	}
	ss, err := parseMetrics(resp.Body)
	if err != nil {
		p.t.Fatalf("parsing /metrics: %v", err)
	}
	return ss
}

// Metric returns the value of the /metrics sample with the given name and exactly the
// given labels, and whether there is one. A label with an empty value counts as absent,
// as in Prometheus (ferry_requests_total{route=""} matches labels without route).
func (p *Process) Metric(name string, labels map[string]string) (float64, bool) {
	p.t.Helper()
	return findSample(p.Metrics(), name, labels)
}

// MetricWith returns the value of the first /metrics sample named name whose labels
// include every one of labels (each written name="value"), or -1 if there is none.
func (p *Process) MetricWith(name string, labels ...string) float64 {
	p.t.Helper()
	want := map[string]string{}
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		want[k] = strings.Trim(v, `"`)
	}
	for _, s := range p.Metrics() {
		if s.Name == name && HasLabels(s, want) {
			return s.Value
		}
	}
	return -1
}

// HasLabels reports whether s has every one of labels (and maybe more).
func HasLabels(s Sample, labels map[string]string) bool {
	for k, v := range labels {
		if got, ok := s.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// findSample returns the value of the sample named name whose labels are exactly labels
// (labels with an empty value aside, see onlyEmptyBesides).
func findSample(ss []Sample, name string, labels map[string]string) (float64, bool) {
	for _, s := range ss {
		if s.Name == name && HasLabels(s, labels) && onlyEmptyBesides(s, labels) {
			return s.Value, true
		}
	}
	return 0, false
}

// onlyEmptyBesides reports whether every label of s that labels does not name is empty: as
// in Prometheus, a label with an empty value is the same as no label.
func onlyEmptyBesides(s Sample, labels map[string]string) bool {
	for k, v := range s.Labels {
		if _, named := labels[k]; !named && v != "" {
			return false
		}
	}
	return true
}

// parseMetrics parses the Prometheus text format: comments are skipped, every other line
// is `name{label="value",...} value [timestamp]`.
func parseMetrics(r io.Reader) ([]Sample, error) {
	var out []Sample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s := Sample{Labels: map[string]string{}}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			return nil, fmt.Errorf("bad line %q", line)
		}
		rest := line
		s.Name, rest = line[:i], line[i:]
		if rest[0] == '{' {
			var err error
			rest, err = parseLabels(rest[1:], s.Labels)
			if err != nil {
				return nil, fmt.Errorf("line %q: %v", line, err)
			}
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("line %q: no value", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %q: %v", line, err)
		}
		s.Value = v
		out = append(out, s)
	}
	return out, sc.Err()
}

// parseLabels parses `a="x",b="y"}` into into and returns what follows the closing brace.
func parseLabels(s string, into map[string]string) (string, error) {
	for {
		s = strings.TrimLeft(s, " ,")
		if s == "" {
			return "", errors.New("unterminated labels")
		}
		if s[0] == '}' {
			return s[1:], nil
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			return "", errors.New("bad label")
		}
		name := s[:eq]
		s = s[eq+2:]
		var val strings.Builder
		i := 0
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[i])
				}
				continue
			}
			val.WriteByte(s[i])
		}
		if i >= len(s) {
			return "", errors.New("unterminated label value")
		}
		into[name] = val.String()
		s = s[i+1:]
	}
}
