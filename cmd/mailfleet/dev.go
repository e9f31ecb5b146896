package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/certs"
	"github.com/mailfleet/mailfleet/relay/config"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

// The demo identity dev mode creates.
const (
	devAPIUser = "demo"
	devLabelID = "1001"
)

type devOptions struct {
	dataDir     string
	smtpPort    int
	smtpsPort   int
	apiPort     int
	metricsAddr string
	logLevel    string
	// eventsURL, when set, receives the demo account's delivery events.
	eventsURL string
}

// devSecrets are what dev mode keeps in credentials.env across runs.
type devSecrets struct {
	key           string
	webhookSecret string // only with --events-url
}

func devCommand() *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a relay on localhost with a demo account, for a first look",
		Long: `dev runs everything on this machine, with no cluster and no root: a relay on
127.0.0.1 (STARTTLS and implicit TLS) with a self-signed certificate, a demo
account and label, an in-process budget, an embedded JetStream queue in
DATA_DIR/queue, and delivery into DATA_DIR/mail as .eml files. It prints how to send a first message and writes
DATA_DIR/credentials.env for scripts to source.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			cfg, secrets, err := prepareDev(o)
			if err != nil {
				return err
			}
			return runRelay(ctx, cfg, relayHooks{
				started: func(l relayListening) {
					if err := announceDev(cmd.OutOrStdout(), o, secrets, l); err != nil {
						fmt.Fprintln(cmd.ErrOrStderr(), "mailfleet dev:", err)
					}
				},
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", ".mailfleet", "directory for everything dev mode makes")
	f.IntVar(&o.smtpPort, "smtp-port", 2525, "SMTP port with STARTTLS on 127.0.0.1 (0 picks a free one)")
	f.IntVar(&o.smtpsPort, "smtps-port", 4650, "implicit-TLS port on 127.0.0.1 (0 picks a free one)")
	f.IntVar(&o.apiPort, "api-port", 8443, "HTTPS port of the send API on 127.0.0.1 (0 picks a free one)")
	f.StringVar(&o.metricsAddr, "metrics-address", "127.0.0.1:9090", "address for /metrics, /healthz and /readyz")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.eventsURL, "events-url", "", "post the demo account's delivery events to this http(s) URL, signed (docs/events.md)")
	return cmd
}

// prepareDev makes the data directory's certificate, credentials and relay
// configuration. The demo key (and webhook secret) are kept across runs, so
// scripts that sourced credentials.env keep working.
func prepareDev(o devOptions) (config.Config, devSecrets, error) {
	dir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return config.Config{}, devSecrets{}, fmt.Errorf("data dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return config.Config{}, devSecrets{}, fmt.Errorf("create data dir: %w", err)
	}
	files, err := certs.EnsureSelfSigned(filepath.Join(dir, "tls"), []string{"localhost", "127.0.0.1"})
	if err != nil {
		return config.Config{}, devSecrets{}, err
	}
	secrets, account, err := devAccount(filepath.Join(dir, "credentials.env"), o.eventsURL)
	if err != nil {
		return config.Config{}, devSecrets{}, err
	}
	credsFile := filepath.Join(dir, "credentials.yaml")
	if err := credentials.WriteFile(credsFile, []wire.Account{account}); err != nil {
		return config.Config{}, devSecrets{}, err
	}
	cfg := config.Config{
		Hostname: "localhost",
		Banner:   "mailfleet dev",
		Node:     "dev",
		Listeners: []config.Listener{
			{Name: "smtp", Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(o.smtpPort))},
			{Name: "smtps", Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(o.smtpsPort)), ImplicitTLS: true},
		},
		HTTPAPI:         &config.HTTPAPI{Enabled: true, Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(o.apiPort))},
		TLS:             &config.TLS{CertFile: files.CertFile, KeyFile: files.KeyFile},
		CredentialsFile: credsFile,
		SpoolDir:        filepath.Join(dir, "queue"),
		Delivery:        config.Delivery{LocalDir: filepath.Join(dir, "mail")},
		MetricsAddress:  o.metricsAddr,
		LogLevel:        o.logLevel,
	}
	if o.eventsURL != "" {
		// A receiver during development runs on this machine or next to
		// it, in clear: what the relay refuses by default (no SSRF into
		// a cluster) is what dev mode is for.
		cfg.Webhooks = config.Webhooks{AllowHTTP: true, AllowedDestinations: devWebhookNetworks}
	}
	cfg.Defaults()
	return cfg, secrets, cfg.Validate()
}

// devWebhookNetworks are where dev mode's --events-url may point besides
// public addresses: this machine and private networks.
var devWebhookNetworks = []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"}

// devAccount is the demo account, with its key and, given an events URL,
// a webhook with its secret; both come from credentials.env when it has
// them.
func devAccount(envFile, eventsURL string) (devSecrets, wire.Account, error) {
	recorded, err := readDevEnv(envFile)
	if err != nil {
		return devSecrets{}, wire.Account{}, err
	}
	var s devSecrets
	if s.key, err = recordedOrNew(recorded, "MAILFLEET_API_KEY"); err != nil {
		return devSecrets{}, wire.Account{}, err
	}
	a := wire.Account{
		APIUser:    devAPIUser,
		KeyDigests: []string{wire.Digest(s.key)},
		Labels:     []wire.Label{{ID: devLabelID}},
	}
	if eventsURL != "" {
		if s.webhookSecret, err = recordedOrNew(recorded, "MAILFLEET_WEBHOOK_SECRET"); err != nil {
			return devSecrets{}, wire.Account{}, err
		}
		a.Webhooks = []wire.Webhook{{URL: eventsURL, Secret: s.webhookSecret}}
	}
	if err := wire.CheckAccount(a); err != nil {
		return devSecrets{}, wire.Account{}, fmt.Errorf("--events-url: %w", err)
	}
	return s, a, nil
}

// readDevEnv returns the values recorded in credentials.env, none when it
// does not exist yet.
func readDevEnv(envFile string) (map[string]string, error) {
	f, err := os.Open(envFile)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", envFile, err)
	}
	defer f.Close()
	values := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			values[k] = strings.Trim(v, "'")
		}
	}
	return values, sc.Err()
}

// recordedOrNew is the value of name in recorded, or a new random one.
func recordedOrNew(recorded map[string]string, name string) (string, error) {
	if v := recorded[name]; v != "" {
		return v, nil
	}
	return wire.NewKey()
}

// announceDev writes credentials.env and tells the person how to send mail.
func announceDev(out io.Writer, o devOptions, secrets devSecrets, l relayListening) error {
	dir, _ := filepath.Abs(o.dataDir)
	smtpPort := l.smtp.Addr("smtp").(*net.TCPAddr).Port
	smtpsPort := l.smtp.Addr("smtps").(*net.TCPAddr).Port
	apiPort := l.api.Addr().(*net.TCPAddr).Port
	caFile := filepath.Join(dir, "tls", "ca.crt")
	env := fmt.Sprintf("MAILFLEET_API_USER=%s\nMAILFLEET_API_KEY=%s\nMAILFLEET_LABEL_ID=%s\n"+
		"MAILFLEET_SMTP_PORT=%d\nMAILFLEET_SMTPS_PORT=%d\nMAILFLEET_API_PORT=%d\nMAILFLEET_CA_FILE=%s\n",
		devAPIUser, secrets.key, devLabelID, smtpPort, smtpsPort, apiPort, caFile)
	if secrets.webhookSecret != "" {
		env += "MAILFLEET_WEBHOOK_SECRET=" + secrets.webhookSecret + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "credentials.env"), []byte(env), 0o600); err != nil {
		return fmt.Errorf("write credentials.env: %w", err)
	}
	// The key is shown only to a person at a terminal; output that goes to
	// a file or a CI log refers to credentials.env instead.
	key := secrets.key
	shown, shell, python := key, key, strconv.Quote(key)
	if !isTerminal(out) {
		shown = "$MAILFLEET_API_KEY (in credentials.env; shown only on a terminal)"
		shell, python = "$MAILFLEET_API_KEY", `os.environ["MAILFLEET_API_KEY"]`
	}
	_, err := fmt.Fprintf(out, devAnnouncement,
		smtpPort, smtpsPort, apiPort, l.metrics, devAPIUser, shown, devLabelID, caFile,
		filepath.Join(dir, "mail"), filepath.Join(dir, "credentials.env"),
		smtpPort, caFile, devAPIUser, devLabelID, shell,
		smtpPort, caFile, devAPIUser, devLabelID, python,
		caFile, devAPIUser, devLabelID, shell, apiPort)
	if err == nil && o.eventsURL != "" {
		_, err = fmt.Fprintf(out, devEventsAnnouncement, o.eventsURL)
	}
	if err == nil {
		_, err = fmt.Fprint(out, "\nPress Ctrl-C to stop.\n")
	}
	return err
}

// isTerminal reports whether w is a character device such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

const devAnnouncement = `
mailfleet dev is running.

  SMTP (STARTTLS)   127.0.0.1:%d
  SMTPS (implicit)  127.0.0.1:%d
  HTTP send API     https://127.0.0.1:%d/v1/mail/send
  metrics           http://%s/metrics
  api_user          %s
  api_key           %s
  label_id          %s
  CA certificate    %s
  delivered mail    %s/*.eml
  for scripts       source %s

Send a message with swaks:

  swaks --server 127.0.0.1 --port %d --tls --tls-verify --tls-ca-path '%s' \
    --auth LOGIN --auth-user '%s#%s' --auth-password "%s" \
    --from me@example.com --to you@example.com

or with Python:

  import os, smtplib, ssl
  from email.message import EmailMessage
  msg = EmailMessage()
  msg["From"], msg["To"], msg["Subject"] = "me@example.com", "you@example.com", "hello"
  msg.set_content("first message through mailfleet")
  with smtplib.SMTP("127.0.0.1", %d) as s:
      s.starttls(context=ssl.create_default_context(cafile=%q))
      s.login(%q + "#" + %q, %s)
      s.send_message(msg)

or with curl, through the HTTP send API (docs/api.md):

  curl --cacert '%s' --user '%s#%s:'"%s" \
    -H 'Content-Type: application/json' \
    -d '{"from":"me@example.com","to":["you@example.com"],"subject":"hello","text":"first message through the API"}' \
    https://127.0.0.1:%d/v1/mail/send
`

const devEventsAnnouncement = `
The demo account's delivery events are posted to
  %s
as JSON batches signed with MAILFLEET_WEBHOOK_SECRET (in credentials.env);
check the X-Mailfleet-Signature header as docs/events.md shows.
`
