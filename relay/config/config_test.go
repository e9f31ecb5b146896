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
				if len(c.Listeners) != 4 || !c.Listeners[1].AuthRequiresTLS || !c.Listeners[3].ImplicitTLS {
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
			if sc := c.Budget.Sidecar; sc.Address != "127.0.0.1:8081" || sc.Timeout.Duration != 100*time.Millisecond {
				t.Fatalf("budget.sidecar = %+v", sc)
			}
		}},
		{name: "budget sidecar", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecar: {address: '127.0.0.1:9000', timeout: 50ms}}\n", check: func(t *testing.T, c Config) {
			if sc := c.Budget.Sidecar; sc.Address != "127.0.0.1:9000" || sc.Timeout.Duration != 50*time.Millisecond {
				t.Fatalf("budget.sidecar = %+v", sc)
			}
		}},
		{name: "budget sidecar address", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecar: {address: sidecar}}\n", wantErr: "budget.sidecar.address"},
		{name: "budget pod share", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {podShare: 3}\n", check: func(t *testing.T, c Config) {
			if c.Budget.PodShare != 3 {
				t.Fatalf("budget.podShare = %d, want 3", c.Budget.PodShare)
			}
		}},
		{name: "budget pod share with sidecar", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {podShare: 3, sidecar: {}}\n", wantErr: "budget.podShare"},
		{name: "budget typo", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}]\nbudget: {sidecr: {}}\n", wantErr: `unknown field "sidecr"`},
		{name: "duplicate listener", file: "credentialsFile: /c\nspoolDir: /s\nlisteners: [{name: a, address: ':1'}, {name: a, address: ':2'}]\n", wantErr: `name "a" is used twice`},
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
