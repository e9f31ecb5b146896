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
			cfg, key, err := prepareDev(o)
			if err != nil {
				return err
			}
			return runRelay(ctx, cfg, relayHooks{
				started: func(l relayListening) {
					if err := announceDev(cmd.OutOrStdout(), o, key, l); err != nil {
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
	return cmd
}

// prepareDev makes the data directory's certificate, credentials and relay
// configuration. The demo key is kept across runs, so scripts that sourced
// credentials.env keep working.
func prepareDev(o devOptions) (config.Config, string, error) {
	dir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return config.Config{}, "", fmt.Errorf("data dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return config.Config{}, "", fmt.Errorf("create data dir: %w", err)
	}
	files, err := certs.EnsureSelfSigned(filepath.Join(dir, "tls"), []string{"localhost", "127.0.0.1"})
	if err != nil {
		return config.Config{}, "", err
	}
	key, err := devKey(filepath.Join(dir, "credentials.env"))
	if err != nil {
		return config.Config{}, "", err
	}
	credsFile := filepath.Join(dir, "credentials.yaml")
	err = credentials.WriteFile(credsFile, []wire.Account{{
		APIUser:    devAPIUser,
		KeyDigests: []string{wire.Digest(key)},
		Labels:     []wire.Label{{ID: devLabelID}},
	}})
	if err != nil {
		return config.Config{}, "", err
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
	cfg.Defaults()
	return cfg, key, cfg.Validate()
}

// devKey returns the key recorded in credentials.env, or a new one.
func devKey(envFile string) (string, error) {
	f, err := os.Open(envFile)
	if os.IsNotExist(err) {
		return wire.NewKey()
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", envFile, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MAILFLEET_API_KEY="); ok && v != "" {
			return strings.Trim(v, "'"), nil
		}
	}
	return wire.NewKey()
}

// announceDev writes credentials.env and tells the person how to send mail.
func announceDev(out io.Writer, o devOptions, key string, l relayListening) error {
	dir, _ := filepath.Abs(o.dataDir)
	smtpPort := l.smtp.Addr("smtp").(*net.TCPAddr).Port
	smtpsPort := l.smtp.Addr("smtps").(*net.TCPAddr).Port
	apiPort := l.api.Addr().(*net.TCPAddr).Port
	caFile := filepath.Join(dir, "tls", "ca.crt")
	env := fmt.Sprintf("MAILFLEET_API_USER=%s\nMAILFLEET_API_KEY=%s\nMAILFLEET_LABEL_ID=%s\n"+
		"MAILFLEET_SMTP_PORT=%d\nMAILFLEET_SMTPS_PORT=%d\nMAILFLEET_API_PORT=%d\nMAILFLEET_CA_FILE=%s\n",
		devAPIUser, key, devLabelID, smtpPort, smtpsPort, apiPort, caFile)
	if err := os.WriteFile(filepath.Join(dir, "credentials.env"), []byte(env), 0o600); err != nil {
		return fmt.Errorf("write credentials.env: %w", err)
	}
	// The key is shown only to a person at a terminal; output that goes to
	// a file or a CI log refers to credentials.env instead.
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

Press Ctrl-C to stop.
`
