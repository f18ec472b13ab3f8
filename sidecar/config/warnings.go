package config

// Warnings returns what in c is valid but probably not what its author meant, one
// sentence each, for `ferry validate` and the start-up and reload logs. c must be a
// Config returned by Load or Parse.
func (c *Config) Warnings() []string {
	var w []string
	if c.MTLS == nil {
		w = append(w, "no mtls block: traffic between sidecars is plaintext")
	}
	w = append(w, mtlsWarnings(c)...)
	if c.HasPolicy() && c.Inbound == nil && len(c.Ingress) == 0 {
		w = append(w, "policy: there is no inbound or ingress listener, so nothing enforces this policy (it applies to requests arriving at this service, not to outbound calls)")
	}
	return w
}
