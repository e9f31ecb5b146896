package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{
			name: "minimal file takes the contract's listeners",
			file: "credentialsFile: /c.yaml\nspoolDir: /s\ntls: {certFile: /t.crt, keyFile: /t.key}\n",
			check: func(t *testing.T, c Config) {
				if len(c.Listeners) != 4 || !c.Listeners[0].AuthNeedsTLS() || !c.Listeners[1].AuthNeedsTLS() || !c.Listeners[3].ImplicitTLS {
					t.Fatalf("listeners = %+v", c.Listeners)
				}
				if c.DrainGracePeriod.Duration != 30*time.Second {
					t.Fatalf("drain grace = %v", c.DrainGracePeriod)
				}
			},
		},
		{
			name: "durations and limits",
			file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':2525'}]\nlimits: {commandTimeout: 90s, maxRecipients: 50}\n",
			check: func(t *testing.T, c Config) {
				if c.Limits.CommandTimeout.Duration != 90*time.Second || c.Limits.MaxRecipients != 50 {
					t.Fatalf("limits = %+v", c.Limits)
				}
			},
		},
		{
			name: "the HTTP API takes its default port",
			file: "credentialsFile: /c\nspoolDir: /s\ntls: {certFile: /t.crt, keyFile: /t.key}\nhttpAPI: {enabled: true}\n",
			check: func(t *testing.T, c Config) {
				if !c.HTTPAPI.Serves() || c.HTTPAPI.Address != ":8443" {
					t.Fatalf("httpAPI = %+v", c.HTTPAPI)
				}
			},
		},
		{name: "the HTTP API needs TLS", file: "credentialsFile: /c\nspoolDir: /s\nhttpAPI: {enabled: true}\n", wantErr: "httpAPI: the API serves HTTPS only"},
		{name: "the HTTP API's PROXY protocol needs trusted proxies", file: "credentialsFile: /c\nspoolDir: /s\ntls: {certFile: /t.crt, keyFile: /t.key}\nhttpAPI: {enabled: true, proxyProtocol: true}\n", wantErr: "httpAPI: proxyProtocol needs trustedProxies"},
		{name: "the HTTP API's address", file: "credentialsFile: /c\nspoolDir: /s\ntls: {certFile: /t.crt, keyFile: /t.key}\nhttpAPI: {enabled: true, address: '8443'}\n", wantErr: `httpAPI.address "8443"`},
		{name: "unknown field", file: "credentialsFile: /c\nspoolDir: /s\nlistner: []\n", wantErr: `unknown field "listner"`},
		{name: "bad duration", file: "credentialsFile: /c\nspoolDir: /s\ndrainGracePeriod: soon\n", wantErr: `duration "soon"`},
		{name: "implicit TLS without cert", file: "credentialsFile: /c\nspoolDir: /s\n", wantErr: "implicitTLS needs tls.certFile"},
		{name: "missing credentials", file: "spoolDir: /s\nlisteners: [{name: a, address: ':1'}]\n", wantErr: "credentialsFile or credentialsSecrets: one is required"},
		{name: "two credentials sources", file: "credentialsFile: /c\ncredentialsSecrets: {namespace: mail, relay: mx}\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\n", wantErr: "set only one"},
		{name: "credentials from the API server", file: "credentialsSecrets: {namespace: mail, relay: mx}\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\n", check: func(t *testing.T, c Config) {
			if c.CredentialsSecrets.Relay != "mx" {
				t.Fatalf("credentialsSecrets = %+v", c.CredentialsSecrets)
			}
		}},
		{name: "no budget section: counted in-process", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\n", check: func(t *testing.T, c Config) {
			if c.Budget.Sidecar != nil {
				t.Fatalf("budget = %+v, want no sidecar", c.Budget.Sidecar)
			}
		}},
		{name: "budget sidecar with defaults", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecar: {}}\n", check: func(t *testing.T, c Config) {
			if sc := c.Budget.Sidecar; sc.Address != "127.0.0.1:8081" || sc.Timeout.Duration != 100*time.Millisecond || !sc.UsesLeases() {
				t.Fatalf("budget.sidecar = %+v", sc)
			}
		}},
		{name: "budget sidecar", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecar: {address: '127.0.0.1:9000', timeout: 50ms, leases: false}}\n", check: func(t *testing.T, c Config) {
			if sc := c.Budget.Sidecar; sc.Address != "127.0.0.1:9000" || sc.Timeout.Duration != 50*time.Millisecond || sc.UsesLeases() {
				t.Fatalf("budget.sidecar = %+v", sc)
			}
		}},
		{name: "budget sidecar leases", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecar: {leaseLife: 500ms, idleReturn: 5s}}\n", check: func(t *testing.T, c Config) {
			if sc := c.Budget.Sidecar; sc.LeaseLife.Duration != 500*time.Millisecond || sc.IdleReturn.Duration != 5*time.Second {
				t.Fatalf("budget.sidecar = %+v", sc)
			}
		}},
		{name: "budget lease life too long", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecar: {leaseLife: 2m}}\n", wantErr: "budget.sidecar.leaseLife: 2m0s is out of range; set 1ms to 30s"},
		{name: "budget idle return negative", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecar: {idleReturn: -1s}}\n", wantErr: "budget.sidecar.idleReturn"},
		{name: "budget sidecar address", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecar: {address: sidecar}}\n", wantErr: "budget.sidecar.address"},
		{name: "budget pod share", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {podShare: 3}\n", check: func(t *testing.T, c Config) {
			if c.Budget.PodShare != 3 {
				t.Fatalf("budget.podShare = %d, want 3", c.Budget.PodShare)
			}
		}},
		{name: "budget pod share with sidecar", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {podShare: 3, sidecar: {}}\n", wantErr: "budget.podShare"},
		{name: "budget typo", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecr: {}}\n", wantErr: `unknown field "sidecr"`},
		{name: "duplicate listener", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}, {name: a, address: ':2'}]\n", wantErr: `name "a" is used twice`},
		{name: "queue defaults to embedded under spoolDir", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\n", check: func(t *testing.T, c Config) {
			if c.Queue.Embedded == nil || c.Queue.Embedded.Dir != "/s" || c.Queue.NATS != nil || c.Queue.AckWait.Duration != time.Minute {
				t.Fatalf("queue = %+v", c.Queue)
			}
		}},
		{name: "external queue needs no spoolDir", file: "credentialsFile: /c\nlisteners: [{name: a, address: ':1'}]\nqueue: {nats: {url: 'tls://nats:4222', credentialsFile: /n/user.creds, caFile: /n/ca.crt, stream: MAIL, replicas: 3}, ackWait: 2m}\n", check: func(t *testing.T, c Config) {
			if n := c.Queue.NATS; n == nil || n.URL != "tls://nats:4222" || n.Stream != "MAIL" || n.Replicas != 3 || c.Queue.Embedded != nil || c.Queue.AckWait.Duration != 2*time.Minute {
				t.Fatalf("queue = %+v", c.Queue)
			}
		}},
		{name: "embedded queue needs a directory", file: "credentialsFile: /c\nlisteners: [{name: a, address: ':1'}]\n", wantErr: "spoolDir or queue.embedded.dir"},
		{name: "two queues", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nqueue: {embedded: {}, nats: {url: 'nats://n:4222'}}\n", wantErr: "queue: set only one"},
		{name: "nats user without password", file: "credentialsFile: /c\nlisteners: [{name: a, address: ':1'}]\nqueue: {nats: {url: 'nats://n:4222', userFile: /u}}\n", wantErr: "set both or neither"},
		{name: "ack wait too short", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nqueue: {ackWait: 1s}\n", wantErr: "queue.ackWait"},
		{name: "delivery", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\ndelivery: {workers: 4, perDomain: 2, backoff: {schedule: [1s, 1m]}, expiry: 1h, smarthost: {host: smtp.example, port: 2525, tls: required}}\n", check: func(t *testing.T, c Config) {
			d := c.Delivery
			if d.Workers != 4 || d.PerDomain != 2 || len(d.Backoff.Schedule) != 2 || d.Backoff.Schedule[1].Duration != time.Minute || d.Expiry.Duration != time.Hour || d.Smarthost.Port != 2525 {
				t.Fatalf("delivery = %+v", d)
			}
		}},
		{name: "allowed destination not a CIDR", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\ndelivery: {allowedDestinations: [intranet]}\n", wantErr: "want a CIDR such as 10.20.0.0/16"},
		{name: "webhook destination not a CIDR", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nwebhooks: {allowedDestinations: [cluster]}\n", wantErr: "webhooks.allowedDestinations[0]"},
		{name: "negative event buffer", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nevents: {buffer: -1}\n", wantErr: "events.maxAge, events.maxBytes and events.buffer"},
		{name: "suppression mode", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nsuppression: {onSubmission: Ignore}\n", wantErr: `suppression.onSubmission: "Ignore" is not Refuse or Drop`},
		{name: "negative event bytes", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nevents: {maxBytes: -1}\n", wantErr: "events.maxBytes"},
		{name: "events and webhooks tuned", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nevents: {maxAge: 72h}\nwebhooks: {allowHTTP: true, batchSize: 10, giveUp: 2h, allowedDestinations: [10.1.0.0/16]}\n", check: func(t *testing.T, c Config) {
			w := c.Webhooks
			if c.Events.MaxAge.Duration != 72*time.Hour || !w.AllowHTTP || w.BatchSize != 10 || w.GiveUp.Duration != 2*time.Hour || len(w.AllowedDestinations) != 1 {
				t.Fatalf("events %+v webhooks %+v", c.Events, w)
			}
		}},
		{name: "smarthost without host", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\ndelivery: {smarthost: {port: 25}}\n", wantErr: "delivery.smarthost.host"},
		{name: "smarthost TLS mode", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\ndelivery: {smarthost: {host: h, tls: maybe}}\n", wantErr: "delivery.smarthost.tls"},
		{name: "backoff max below min", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\ndelivery: {backoff: {min: 1h, max: 1m}}\n", wantErr: "delivery.backoff.max"},
		{name: "metricsAddress alone serves everything, as before", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nmetricsAddress: ':9100'\n", check: func(t *testing.T, c Config) {
			if c.MetricsAddress != ":9100" || c.Metrics.SeparateAddress(c.MetricsAddress) {
				t.Fatalf("metricsAddress = %q, metrics = %+v", c.MetricsAddress, c.Metrics)
			}
		}},
		{name: "metrics protected with the relay's certificate", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\ntls: {certFile: /t.crt, keyFile: /t.key}\nmetrics: {address: ':9443', tls: {}, bearerTokenFile: /m/token}\n", check: func(t *testing.T, c Config) {
			if m := c.Metrics; !m.SeparateAddress(c.MetricsAddress) || m.TLS == nil || m.TLS.CertFile != "" || m.BearerTokenFile != "/m/token" || c.MetricsAddress != ":9090" {
				t.Fatalf("metrics = %+v, metricsAddress %q", m, c.MetricsAddress)
			}
		}},
		{name: "metrics with a certificate of its own", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nmetrics: {address: ':9443', tls: {certFile: /m.crt, keyFile: /m.key}}\n", check: func(t *testing.T, c Config) {
			if c.Metrics.TLS.CertFile != "/m.crt" {
				t.Fatalf("metrics = %+v", c.Metrics)
			}
		}},
		{name: "metrics TLS beside the probes", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\ntls: {certFile: /t.crt, keyFile: /t.key}\nmetrics: {tls: {}}\n", wantErr: "metrics.tls: needs metrics.address"},
		{name: "metrics TLS on metricsAddress", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\ntls: {certFile: /t.crt, keyFile: /t.key}\nmetrics: {address: ':9090', tls: {}}\n", wantErr: "metrics.tls: needs metrics.address"},
		{name: "metrics TLS without the relay's", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nmetrics: {address: ':9443', tls: {}}\n", wantErr: "tls is not set"},
		{name: "metrics TLS half a pair", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nmetrics: {address: ':9443', tls: {certFile: /m.crt}}\n", wantErr: "set both certFile and keyFile"},
		{name: "PROXY protocol listener", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1', proxyProtocol: true, trustedProxies: [10.0.0.0/8, '192.0.2.10/32', 'fd00::/8']}]\n", check: func(t *testing.T, c Config) {
			p, err := c.Listeners[0].TrustedProxyPrefixes()
			if err != nil || !c.Listeners[0].ProxyProtocol || len(p) != 3 || p[1].String() != "192.0.2.10/32" {
				t.Fatalf("listener = %+v, prefixes %v %v", c.Listeners[0], p, err)
			}
		}},
		{name: "PROXY protocol without trusted proxies", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1', proxyProtocol: true}]\n", wantErr: "proxyProtocol needs trustedProxies"},
		{name: "trusted proxies without PROXY protocol", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1', trustedProxies: [10.0.0.0/8]}]\n", wantErr: "only read with proxyProtocol"},
		{name: "trusted proxy not a CIDR", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1', proxyProtocol: true, trustedProxies: [lb.example]}]\n", wantErr: `trustedProxies[0] "lb.example"`},
		{name: "log level", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nlogLevel: loud\n", wantErr: `logLevel: "loud"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "relay.yaml")
			if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}
