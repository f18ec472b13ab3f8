package consul

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// kvFileConfig is a ferry config whose upstream api is the static endpoint fileBackend,
// following the mesh-wide document at Consul KV key ferry/web on agentAddr.
func kvFileConfig(admin, out, agentAddr, fileBackend, drain string) string {
	return fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: api, address: %s}]
upstreams:
  - name: api
    endpoints: [%s]
discovery:
  consul: {address: %s, config_key: ferry/web}
drain_timeout: %s
`, admin, out, fileBackend, agentAddr, drain)
}

// kvUpstreams is a KV document replacing upstreams with api on the given backends.
func kvUpstreams(bs ...*backend) string {
	addrs := make([]string, len(bs))
	for i, b := range bs {
		addrs[i] = b.addr
	}
	return "# mesh-wide settings of web\nupstreams:\n  - name: api\n    endpoints: [" + strings.Join(addrs, ", ") + "]\n"
}

// kvPut writes value at key and returns its ModifyIndex.
func kvPut(t *testing.T, c *api.Client, key, value string) uint64 {
	t.Helper()
	if _, err := c.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		t.Fatalf("consul kv put %s: %v", key, err)
	}
	p, _, err := c.KV().Get(key, nil)
	if err != nil || p == nil {
		t.Fatalf("consul kv get %s = %v, %v", key, p, err)
	}
	return p.ModifyIndex
}

// configDump is the part of /config_dump these tests read.
type configDump struct {
	Version string `json:"version"`
	Config  struct {
		DrainTimeout string `json:"drain_timeout"`
		Overlay      *struct {
			Source      string   `json:"source"`
			ModifyIndex uint64   `json:"modify_index"`
			Keys        []string `json:"keys"`
		} `json:"overlay"`
	} `json:"config"`
}

func (f *ferry) configDump() configDump {
	f.t.Helper()
	c := &http.Client{Timeout: ioTimeout}
	resp, err := c.Get(f.AdminURL("/config_dump"))
	if err != nil {
		f.t.Fatalf("GET /config_dump: %v", err)
	}
	defer resp.Body.Close()
	var d configDump
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		f.t.Fatalf("decoding /config_dump: %v", err)
	}
	return d
}

// kvIndex is the ModifyIndex of the KV document in force (0 for none).
func (f *ferry) kvIndex() uint64 {
	if ov := f.configDump().Config.Overlay; ov != nil {
		return ov.ModifyIndex
	}
	return 0
}

// onlyTo reports whether n requests all reached the backends named (and each of them).
func onlyTo(t *testing.T, url string, n int, names ...string) bool {
	got := seen(t, url, n)
	total := 0
	for _, name := range names {
		if got[name] == 0 {
			return false
		}
		total += got[name]
	}
	return total == n
}

func TestKVConfigFollowsKey(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := consulClient(t, agent)
	fileB, b1, b2 := startBackend(t, "file"), startBackend(t, "kv-1"), startBackend(t, "kv-2")
	i1 := kvPut(t, c, "ferry/web", kvUpstreams(b1))

	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfgText := kvFileConfig(admin, out, agent.Addr, fileB.addr, "2s")
	f := startFerry(t, admin, cfgText)
	url := "http://" + out + "/"

	// Start-up: the KV document read before the first Apply is in force at once.
	if !onlyTo(t, url, 20, "kv-1") {
		t.Errorf("at start-up: %v, want every request on kv-1 (the KV's endpoint, not the file's)", seen(t, url, 20))
	}
	d := f.configDump()
	if ov := d.Config.Overlay; ov == nil || ov.Source != "consul kv ferry/web" || ov.ModifyIndex != i1 || strings.Join(ov.Keys, ",") != "upstreams" {
		t.Errorf("/config_dump overlay = %+v, want source consul kv ferry/web, modify_index %d, keys [upstreams]", ov, i1)
	}
	if !strings.Contains(d.Version, "+") {
		t.Errorf("/config_dump version = %q, want <file>+<kv>", d.Version)
	}
	reloadErrors := func() float64 { return max(f.MetricWith("ferry_config_reloads_total", `result="error"`), 0) }
	if n := reloadErrors(); n != 0 {
		t.Fatalf("ferry_config_reloads_total{result=error} = %v at start, want 0", n)
	}

	// A change of the document moves traffic without a restart.
	i2 := kvPut(t, c, "ferry/web", kvUpstreams(b2))
	eventually(t, "traffic moves to kv-2 after consul kv put", func() bool { return onlyTo(t, url, 20, "kv-2") })
	if got := f.kvIndex(); got != i2 {
		t.Errorf("/config_dump modify_index = %d, want %d", got, i2)
	}

	// An invalid document is refused with its line; traffic and config stay.
	bad := "upstreams:\n  - name: api\n    endpoints: [" + b1.addr + "]\n    lb: fastest\n"
	kvPut(t, c, "ferry/web", bad)
	eventually(t, "the invalid document is counted as a failed reload", func() bool { return reloadErrors() == 1 })
	eventually(t, "the invalid document's error is logged with its line", func() bool {
		return f.logHas("consul kv ferry/web:4: upstreams[0].lb", "fastest")
	})
	if !onlyTo(t, url, 30, "kv-2") {
		t.Errorf("after an invalid document: %v, want kv-2 only (the running config stays)", seen(t, url, 30))
	}
	if got := f.kvIndex(); got != i2 {
		t.Errorf("/config_dump modify_index after an invalid document = %d, want %d (unchanged)", got, i2)
	}

	// Fixed: applied.
	i3 := kvPut(t, c, "ferry/web", kvUpstreams(b1, b2))
	eventually(t, "traffic reaches kv-1 and kv-2 after the fix", func() bool { return onlyTo(t, url, 40, "kv-1", "kv-2") })
	if got := f.kvIndex(); got != i3 {
		t.Errorf("/config_dump modify_index after the fix = %d, want %d", got, i3)
	}
	if n := reloadErrors(); n != 1 {
		t.Errorf("ferry_config_reloads_total{result=error} = %v after the fix, want 1", n)
	}

	// SIGHUP re-reads the file and merges the latest document.
	cfgPath := f.Cmd.Args[len(f.Cmd.Args)-1] // ferry run --config PATH
	if _, err := os.Stat(cfgPath); err != nil {
		t.Fatalf("cannot find the config file in ferry's arguments %q: %v", f.Cmd.Args, err)
	}
	if err := os.WriteFile(cfgPath, []byte(strings.Replace(cfgText, "drain_timeout: 2s", "drain_timeout: 3s", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.Signal(syscall.SIGHUP)
	eventually(t, "SIGHUP applies the file's new drain_timeout", func() bool { return f.configDump().Config.DrainTimeout == "3s" })
	if got := f.kvIndex(); got != i3 {
		t.Errorf("/config_dump modify_index after SIGHUP = %d, want %d (the latest document merged)", got, i3)
	}
	if !onlyTo(t, url, 40, "kv-1", "kv-2") {
		t.Errorf("after SIGHUP: %v, want kv-1 and kv-2 (the KV's upstreams)", seen(t, url, 40))
	}

	// The key deleted: the file alone.
	if _, err := c.KV().Delete("ferry/web", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "traffic returns to the file's endpoint after the key is deleted", func() bool { return onlyTo(t, url, 20, "file") })
	if ov := f.configDump().Config.Overlay; ov != nil {
		t.Errorf("/config_dump overlay after the key is deleted = %+v, want none", ov)
	}
	if n := reloadErrors(); n != 1 {
		t.Errorf("ferry_config_reloads_total{result=error} = %v at the end, want 1", n)
	}
}

func TestKVConfigConsulDownAtStart(t *testing.T) {
	ports, err := consultest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}
	agentAddr := fmt.Sprintf("127.0.0.1:%d", ports.HTTP)
	fileB, b1 := startBackend(t, "file"), startBackend(t, "kv-1")
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, kvFileConfig(admin, out, agentAddr, fileB.addr, "2s"))
	url := "http://" + out + "/"

	// Consul is down: the file alone, with a warning.
	if !onlyTo(t, url, 10, "file") {
		t.Errorf("with Consul down: %v, want the file's endpoint only", seen(t, url, 10))
	}
	if !f.logHas("level=WARN", "no answer from Consul; starting with the file alone", "key=ferry/web") {
		t.Errorf("no start-up warning about Consul; log:\n%s", f.Output())
	}

	// Consul comes up with a document: applied without a restart.
	agent := consultest.Start(t, consultest.Options{Ports: &ports})
	kvPut(t, consulClient(t, agent), "ferry/web", kvUpstreams(b1))
	ferrytest.Eventually(t, 40*time.Second, func() bool { return onlyTo(t, url, 10, "kv-1") },
		func() string { return "traffic moves to kv-1 once Consul answers" })
}

func TestKVConfigKeyAbsentAtStart(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	fileB := startBackend(t, "file")
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, kvFileConfig(admin, out, agent.Addr, fileB.addr, "2s"))
	if !onlyTo(t, "http://"+out+"/", 10, "file") {
		t.Errorf("with the key absent: want the file's endpoint only")
	}
	if !f.logHas("level=INFO", "config key absent; running the file alone", "key=ferry/web") {
		t.Errorf("no start-up line saying the key is absent; log:\n%s", f.Output())
	}
	if ov := f.configDump().Config.Overlay; ov != nil {
		t.Errorf("/config_dump overlay = %+v, want none", ov)
	}
}
