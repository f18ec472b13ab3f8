package outlier

import "github.com/ferrymesh/ferry/sidecar/balancer"

// DefaultHealthyPanicThreshold is Envoy's healthy_panic_threshold: below 50 % of endpoints
// available, balance over all of them.
const DefaultHealthyPanicThreshold = 50

// Selection describes what Build chose.
type Selection struct {
	// Total is the number of endpoints given to Build.
	Total int
	// Available is the number of them that are neither ejected nor failing active checks.
	Available int
	// Panic is true when too few endpoints were available and the picker balances over
	// all of them.
	Panic bool
}

// Build is the outlier decorator over a picker builder: it builds inner's picker over the
// endpoints that may take traffic, that is those neither ejected by outlier detection nor
// failing active health checks (balancer.EndpointState.Available). In panic mode, when
// fewer than panicThreshold percent of the endpoints are available, it builds over all of
// them instead, as Envoy does: better to send some calls to bad endpoints than to fail every
// call. A panicThreshold of 0 disables panic mode (and with no endpoint available the
// picker has none to pick). It reads the endpoints' published state only, so it may run
// concurrently with the request path; eps is not modified.
func Build(inner balancer.Builder, eps []*balancer.Endpoint, panicThreshold int) (balancer.Picker, Selection) {
	sel := Selection{Total: len(eps)}
	avail := make([]*balancer.Endpoint, 0, len(eps))
	for _, e := range eps {
		if e.State.Available() {
			avail = append(avail, e)
		}
	}
	sel.Available = len(avail)
	if sel.Available < sel.Total && panicThreshold > 0 && 100*sel.Available < panicThreshold*sel.Total {
		sel.Panic = true
		avail = append(avail[:0], eps...)
	}
	return inner(avail), sel
}
