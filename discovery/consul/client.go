// Package consul is the discovery source for upstreams registered in Consul. Each upstream
// is watched with blocking queries on Consul's health endpoint; the answers become
// immutable discovery.EndpointSets. When Consul cannot be reached, the last published set
// stays in place (static stability) and the staleness is reported through Status.
package consul

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
)

// Config says how to reach the Consul agent. Every empty field falls back to the
// environment variable the Consul CLI reads (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
// CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT,
// CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME, CONSUL_HTTP_SSL_VERIFY, CONSUL_HTTP_AUTH, ...)
// and then to Consul's default (http://127.0.0.1:8500, no token). An explicit field always
// wins over the environment.
type Config struct {
	// Address is host:port, or a URL: http://host:port, https://host:port or
	// unix:///path/to/consul.sock.
	Address string
	// Scheme is http or https. An https:// address implies https.
	Scheme string
	// Datacenter is the default datacenter for queries; empty means the agent's own.
	Datacenter string
	// Token is the ACL token sent with every request.
	Token string
	// TokenFile is a file holding the ACL token, read once by NewClient. It cannot be
	// combined with Token.
	TokenFile string
	// TLS configures HTTPS to the agent.
	TLS TLSConfig
}

// TLSConfig is the TLS configuration for HTTPS to the Consul agent. Empty fields fall back
// to the CONSUL_* environment variables.
type TLSConfig struct {
	// CAFile is a PEM bundle of the CAs that sign the agent's certificate.
	CAFile string
	// CertFile and KeyFile are the client certificate and key, for agents that verify
	// incoming clients.
	CertFile string
	KeyFile  string
	// ServerName is the name to verify the agent's certificate against (default: the host
	// of Address).
	ServerName string
}

// Client is a Consul API client with its own connection pool. It is safe for concurrent
// use; the same Client serves discovery, registration and the Connect CA.
type Client struct {
	api       *api.Client
	transport *http.Transport
}

// NewClient builds a client from cfg over the environment defaults, as the Consul CLI
// does. It does not contact the agent: a client can be built while Consul is down.
func NewClient(cfg Config) (*Client, error) {
	if cfg.Token != "" && cfg.TokenFile != "" {
		return nil, errors.New("consul: token and token_file are mutually exclusive")
	}
	// api.DefaultConfig reads the CONSUL_* environment variables.
	ac := api.DefaultConfig()
	transport := cleanhttp.DefaultPooledTransport()
	ac.Transport = transport

	if cfg.Address != "" {
		ac.Address = cfg.Address
		// An explicit address without a scheme means plain HTTP unless Scheme says
		// otherwise, whatever CONSUL_HTTP_SSL says about the environment's address.
		// (An https:// address switches api.NewClient to https.)
		ac.Scheme = "http"
	}
	switch cfg.Scheme {
	case "":
	case "http", "https":
		ac.Scheme = cfg.Scheme
	default:
		return nil, fmt.Errorf("consul: scheme %q: want http or https", cfg.Scheme)
	}
	if path, ok := strings.CutPrefix(ac.Address, "unix://"); ok {
		// Dial the socket through our own transport, so Close reaches its connections.
		transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		ac.Address = "consul.sock"
		ac.Scheme = "http"
	}
	if cfg.Datacenter != "" {
		ac.Datacenter = cfg.Datacenter
	}
	switch {
	case cfg.TokenFile != "":
		data, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("consul: token_file: %w", err)
		}
		tok := strings.TrimSpace(string(data))
		if tok == "" {
			return nil, fmt.Errorf("consul: token_file %s is empty", cfg.TokenFile)
		}
		ac.Token, ac.TokenFile = tok, ""
	case cfg.Token != "":
		ac.Token, ac.TokenFile = cfg.Token, ""
	case ac.TokenFile != "":
		// CONSUL_HTTP_TOKEN_FILE wins over CONSUL_HTTP_TOKEN, as in the CLI.
		data, err := os.ReadFile(ac.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("consul: CONSUL_HTTP_TOKEN_FILE: %w", err)
		}
		ac.Token, ac.TokenFile = strings.TrimSpace(string(data)), ""
	}
	if cfg.TLS.CAFile != "" {
		ac.TLSConfig.CAFile = cfg.TLS.CAFile
	}
	if cfg.TLS.CertFile != "" {
		ac.TLSConfig.CertFile = cfg.TLS.CertFile
	}
	if cfg.TLS.KeyFile != "" {
		ac.TLSConfig.KeyFile = cfg.TLS.KeyFile
	}
	if cfg.TLS.ServerName != "" {
		ac.TLSConfig.Address = cfg.TLS.ServerName
	}
	if (ac.TLSConfig.CertFile == "") != (ac.TLSConfig.KeyFile == "") {
		return nil, errors.New("consul: tls cert_file and key_file must be given together")
	}
	// Build the HTTP client here so that the TLS settings land on our transport.
	hc, err := api.NewHttpClient(transport, ac.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("consul: tls: %w", err)
	}
	ac.HttpClient = hc
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	return &Client{api: c, transport: transport}, nil
}

// API returns the underlying Consul API client, for registration, the Connect CA and
// intentions.
func (c *Client) API() *api.Client { return c.api }

// Close closes the client's idle connections. Requests still in flight finish; the client
// stays usable (new requests open new connections).
func (c *Client) Close() { c.transport.CloseIdleConnections() }
