package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/config"
	"github.com/mailfleet/mailfleet/relay/credentials"
	"github.com/mailfleet/mailfleet/relay/credentials/kubesource"
	"github.com/mailfleet/mailfleet/relay/delivery"
	"github.com/mailfleet/mailfleet/relay/dispatch"
	"github.com/mailfleet/mailfleet/relay/dsn"
	"github.com/mailfleet/mailfleet/relay/events"
	"github.com/mailfleet/mailfleet/relay/queue"
	"github.com/mailfleet/mailfleet/relay/shaping"
	"github.com/mailfleet/mailfleet/relay/smtpclient"
	"github.com/mailfleet/mailfleet/relay/suppression"
	"github.com/mailfleet/mailfleet/relay/webhook"
)

// openQueue opens the configured queue: the embedded JetStream, or an
// external one.
// waitForQueue opens the queue. An external JetStream that is not there yet
// (a fresh install's NATS still electing its meta leader answers 503
// "JetStream system temporarily unavailable"; a restarted node's NATS not
// yet resolvable) is waited for with backoff, up to a minute between tries,
// for as long as it takes: exiting would only restart the pod into the same
// wait and, after a few tries, into CrashLoopBackOff's longer ones. It
// returns nil, nil when ctx ends first.
func waitForQueue(ctx context.Context, cfg config.Config, reg prometheus.Registerer, log *slog.Logger) (*queue.Queue, error) {
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		q, err := openQueue(ctx, cfg, reg, log)
		if err == nil {
			if attempt > 1 {
				log.Info("queue reachable", "attempts", attempt)
			}
			return q, nil
		}
		if cfg.Queue.Embedded != nil {
			// A local directory does not fix itself by waiting.
			return nil, err
		}
		log.Warn("queue not reachable yet; not ready until it is", "attempt", attempt, "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

func openQueue(ctx context.Context, cfg config.Config, reg prometheus.Registerer, log *slog.Logger) (*queue.Queue, error) {
	o := queue.Options{AckWait: cfg.Queue.AckWait.Duration, Registerer: reg, Log: log}
	if e := cfg.Queue.Embedded; e != nil {
		o.Dir = e.Dir
		log.Info("queue: embedded JetStream, synced before every acknowledgement", "dir", e.Dir)
	} else {
		n := cfg.Queue.NATS
		o.URL, o.CredentialsFile, o.CAFile, o.Stream, o.Replicas = n.URL, n.CredentialsFile, n.CAFile, n.Stream, n.Replicas
		if n.UserFile != "" {
			var err error
			if o.User, err = readSecretFile(n.UserFile); err != nil {
				return nil, fmt.Errorf("queue.nats.userFile: %w", err)
			}
			if o.Password, err = readSecretFile(n.PasswordFile); err != nil {
				return nil, fmt.Errorf("queue.nats.passwordFile: %w", err)
			}
		}
		log.Info("queue: external JetStream", "stream", n.Stream, "replicas", n.Replicas)
	}
	return queue.Open(ctx, o)
}

// openTransport returns where the workers deliver: the smarthost, a local
// directory (dev), or each recipient domain's MX hosts; with the name that
// labels the delivery metrics, and what to call when the relay stops.
func openTransport(ctx context.Context, cfg config.Config, q *queue.Queue, reg prometheus.Registerer, log *slog.Logger) (delivery.Transport, string, func(), error) {
	hostname := deliveryHostname(cfg)
	d := cfg.Delivery
	switch {
	case d.Smarthost != nil:
		sh := d.Smarthost
		mode, err := smtpclient.ParseTLSMode(sh.TLS)
		if err != nil {
			return nil, "", nil, fmt.Errorf("delivery.smarthost.tls: %w", err)
		}
		sc := delivery.SmarthostConfig{
			Host: sh.Host, Port: sh.Port, TLS: mode, Hostname: hostname, LabelHeader: d.LabelHeader,
			MaxConnections: sh.MaxConnections, Log: log, Metrics: delivery.NewMetrics(reg),
		}
		if sh.CAFile != "" {
			pem, err := os.ReadFile(sh.CAFile)
			if err != nil {
				return nil, "", nil, fmt.Errorf("delivery.smarthost.caFile: %w", err)
			}
			sc.RootCAs = x509.NewCertPool()
			if !sc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, "", nil, fmt.Errorf("delivery.smarthost.caFile %s holds no certificate", sh.CAFile)
			}
		}
		if sh.UsernameFile != "" {
			if sc.Username, err = readSecretFile(sh.UsernameFile); err != nil {
				return nil, "", nil, fmt.Errorf("delivery.smarthost.usernameFile: %w", err)
			}
			if sc.Password, err = readSecretFile(sh.PasswordFile); err != nil {
				return nil, "", nil, fmt.Errorf("delivery.smarthost.passwordFile: %w", err)
			}
		}
		t, err := delivery.NewSmarthost(sc)
		if err != nil {
			return nil, "", nil, err
		}
		name := sh.Name
		if name == "" {
			name = sh.Host
		}
		log.Info("delivery: smarthost", "host", sh.Host, "port", sh.Port, "tls", mode.String())
		return t, name, func() { t.Close() }, nil
	case d.LocalDir != "":
		log.Info("delivery: local directory", "dir", d.LocalDir)
		return delivery.NewLocalDirTransport(d.LocalDir, log), "local", func() {}, nil
	default:
		allowed, err := d.DestinationPrefixes()
		if err != nil {
			return nil, "", nil, err
		}
		policies, groupTLS, rules, err := destinations(d.Destinations)
		if err != nil {
			return nil, "", nil, err
		}
		shaper := openShaper(ctx, cfg, q, log)
		t, err := delivery.NewMX(delivery.MXConfig{Hostname: hostname, LabelHeader: d.LabelHeader, Log: log, Metrics: delivery.NewMetrics(reg),
			AllowedDestinations: allowed, AllowAddressLiterals: d.AllowAddressLiterals,
			TLSPolicies: policies, GroupTLS: groupTLS, MTASTS: !d.IgnoreMTASTS, Shaper: shaper, ShapingRules: rules})
		if err != nil {
			return nil, "", nil, err
		}
		log.Info("delivery: direct to each domain's MX hosts")
		return t, "mx", func() { t.Close() }, nil
	}
}

// newDispatcher makes the delivery workers from the configuration.
func newDispatcher(cfg config.Config, q *queue.Queue, t delivery.Transport, destination string, ids dispatch.IDs,
	evs dispatch.Events, sup dispatch.Suppressions, reg prometheus.Registerer, log *slog.Logger) (*dispatch.Dispatcher, error) {
	d := cfg.Delivery
	backoff := delivery.DefaultBackoff()
	if d.Backoff.Min.Duration > 0 {
		backoff.Min = d.Backoff.Min.Duration
	}
	if d.Backoff.Max.Duration > 0 {
		backoff.Max = d.Backoff.Max.Duration
	}
	backoff.Max = max(backoff.Max, backoff.Min)
	for _, s := range d.Backoff.Schedule {
		backoff.Schedule = append(backoff.Schedule, s.Duration)
	}
	if d.Expiry.Duration > 0 {
		backoff.Lifetime = d.Expiry.Duration
	}
	return dispatch.New(dispatch.Config{
		Workers: d.Workers, PerDomain: d.PerDomain, Backoff: backoff, Destination: destination,
		TouchEvery: cfg.Queue.AckWait.Duration / 3,
	}, dispatch.Deps{
		Queue: q, Spool: q, Transport: t, DSN: dsn.Builder(deliveryHostname(cfg)), IDs: ids, Events: evs, Suppressions: sup,
		Registerer: reg, Log: log,
	})
}

// openSuppressions makes the suppression lists' guard, nil when the config
// turns them off. The bucket is opened before the relay takes mail, so that
// a restarted relay refuses what it refused before; when it cannot be, it
// is tried again in the background and mail flows meanwhile, its
// recipients unchecked.
func openSuppressions(ctx context.Context, cfg config.Config, q *queue.Queue, manual suppression.Manual, reg prometheus.Registerer, log *slog.Logger) *suppression.Guard {
	if cfg.Suppression.Disabled {
		return nil
	}
	g := suppression.NewGuard(reg, log)
	g.SetManual(manual)
	openOrRetry(ctx, log, "suppression list not open yet; recipients are not checked meanwhile", func(octx context.Context) error {
		l, err := suppression.Open(octx, q.Conn(), q.Stream(), q.Replicas(), cfg.Suppression.BounceTTL.Duration)
		if err == nil {
			g.Attach(l)
			go l.Watch(ctx, log)
		}
		return err
	})
	return g
}

// openOrRetry calls open with 10 s to succeed; when it fails, it is called
// again in the background, with 30 s each time and a growing pause between,
// logging waiting each time, until it succeeds or ctx ends.
func openOrRetry(ctx context.Context, log *slog.Logger, waiting string, open func(context.Context) error) {
	try := func(timeout time.Duration) error {
		octx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return open(octx)
	}
	err := try(10 * time.Second)
	if err == nil {
		return
	}
	go func() {
		for delay := time.Second; ; delay = min(2*delay, time.Minute) {
			log.Warn(waiting, "retry_in", delay, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			if err = try(30 * time.Second); err == nil {
				return
			}
		}
	}()
}

// asOptional is g as the interface I a package takes, nil when g is: a
// nil *Guard in an interface would not be nil, and the package would call
// it.
func asOptional[I any](g *suppression.Guard) I {
	var none I
	if g == nil {
		return none
	}
	return any(g).(I)
}

// eventsFlush is how long a stopping relay gives its buffered events.
const eventsFlush = 5 * time.Second

// openEvents makes the delivery events stream beside the queue's and the
// producer that writes to it.
func openEvents(ctx context.Context, cfg config.Config, q *queue.Queue, reg prometheus.Registerer, log *slog.Logger) (*events.Producer, error) {
	return events.Open(ctx, events.Options{
		Conn: q.Conn(), Stream: q.Stream(), Replicas: q.Replicas(),
		MaxAge: cfg.Events.MaxAge.Duration, MaxBytes: cfg.Events.MaxBytes, Buffer: cfg.Events.Buffer, Registerer: reg, Log: log,
	})
}

// startWebhooks posts the events to the webhooks of the accounts in creds
// until ctx ends.
func startWebhooks(ctx context.Context, cfg config.Config, q *queue.Queue, creds credentials.Source, reg prometheus.Registerer, log *slog.Logger) error {
	accounts, ok := creds.(webhook.Accounts)
	if !ok {
		log.Warn("webhooks: the credentials source cannot list its accounts; no events are posted")
		return nil
	}
	w := cfg.Webhooks
	allowed, err := w.DestinationPrefixes()
	if err != nil {
		return err
	}
	wcfg := webhook.Config{
		QueueStream: q.Stream(), Replicas: q.Replicas(), BatchSize: w.BatchSize, BatchWait: w.BatchWait.Duration,
		Timeout: w.Timeout.Duration, GiveUp: w.GiveUp.Duration, AllowHTTP: w.AllowHTTP, AllowedDestinations: allowed,
	}
	deps := webhook.Deps{Conn: q.Conn(), Accounts: accounts, Registerer: reg, Log: log}
	if cs := cfg.CredentialsSecrets; cs != nil {
		// In Kubernetes the operator shows the disabled webhooks on the
		// accounts; the relays tell it through their status ConfigMap.
		client, err := kubeClient()
		if err != nil {
			return err
		}
		deps.Status = kubesource.StatusConfigMap{Client: client, Namespace: cs.Namespace, Relay: cs.Relay}
	}
	// The webhooks' consumers are made before the relay takes mail when
	// they can be: a consumer takes the events written after it was made,
	// and the first messages' events would otherwise be written before.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if d, err := webhook.New(sctx, wcfg, deps); err == nil {
		d.Sync(ctx) // the senders it starts live as long as the relay
		go d.Run(ctx)
		return nil
	}
	go runWebhooks(ctx, wcfg, deps, log)
	return nil
}

// runWebhooks starts the dispatcher, and tries again while the events
// stream or the webhooks bucket cannot be had: the relay takes and
// delivers mail meanwhile, and the events wait in the stream (or in the
// producer's buffer) for it.
func runWebhooks(ctx context.Context, cfg webhook.Config, deps webhook.Deps, log *slog.Logger) {
	for delay := time.Second; ; delay = min(2*delay, time.Minute) {
		d, err := webhook.New(ctx, cfg, deps)
		if err == nil {
			d.Run(ctx)
			return
		}
		log.Warn("webhooks not started yet; mail is not held up, events wait for them", "retry_in", delay, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func closeEvents(p *events.Producer) {
	ctx, cancel := context.WithTimeout(context.Background(), eventsFlush)
	defer cancel()
	p.Close(ctx)
}

// deliveryHostname is the name this relay gives itself towards next hops
// (EHLO, Received:) and in bounces: its configured hostname, else the
// machine's.
func deliveryHostname(cfg config.Config) string {
	if cfg.Hostname != "" {
		return cfg.Hostname
	}
	hostname, _ := os.Hostname()
	return hostname
}

// readSecretFile reads a mounted secret's value; a trailing newline, as
// editors and `echo` leave, is not part of it.
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// destinations reads delivery.destinations: the TLS modes by domain and
// by group (a domain listed twice keeps its first), and the shaping
// groups, the relay's own before the defaults it does not replace.
func destinations(list []config.Destination) (map[string]smtpclient.TLSMode, map[string]smtpclient.TLSMode, shaping.Rules, error) {
	modes, groups := map[string]smtpclient.TLSMode{}, map[string]smtpclient.TLSMode{}
	var own []shaping.Rule
	for i, d := range list {
		if !shaping.NamePattern.MatchString(d.Name) {
			return nil, nil, nil, fmt.Errorf("delivery.destinations[%d].name %q: want lowercase letters, digits and -", i, d.Name)
		}
		mode, err := smtpclient.ParseTLSMode(d.TLS)
		if err != nil || mode == smtpclient.TLSImplicit || mode == smtpclient.TLSNone {
			return nil, nil, nil, fmt.Errorf("delivery.destinations[%d].tls %q: want opportunistic, encrypt or required", i, d.TLS)
		}
		if d.TLS != "" {
			groups[d.Name] = mode
			for _, domain := range d.Domains {
				domain = strings.ToLower(strings.TrimSuffix(domain, "."))
				if _, seen := modes[domain]; !seen {
					modes[domain] = mode
				}
			}
		}
		own = append(own, shaping.Rule{Name: d.Name, Domains: d.Domains, MXHosts: d.MXHosts,
			Limits: shaping.Limits{MaxConnections: d.MaxConnections, MaxPerMinute: d.MaxPerMinute,
				MaxMessagesPerConnection: d.MaxMessagesPerConnection}})
	}
	return modes, groups, shaping.WithDefaults(own), nil
}

// openShaper opens the buckets the relays share the destination groups'
// limits in. When JetStream cannot make them yet they are tried again in
// the background, and deliveries are bounded per pod only meanwhile.
func openShaper(ctx context.Context, cfg config.Config, q *queue.Queue, log *slog.Logger) *shaping.Guard {
	g := &shaping.Guard{}
	openOrRetry(ctx, log, "destination shaping not open yet; deliveries are bounded per pod only meanwhile", func(octx context.Context) error {
		f, err := shaping.Open(octx, q.Conn(), q.Stream(), q.Replicas(), cfg.Node)
		if err == nil {
			g.Attach(f)
		}
		return err
	})
	return g
}

// manualSuppressions are the accounts' SmtpSuppressions, as their
// credentials carry them, for the suppression guard.
type manualSuppressions struct{ v *credentials.Verifier }

func (m manualSuppressions) Manual(apiUser, recipient string) (suppression.Entry, bool) {
	s, ok := m.v.Suppression(apiUser, recipient, time.Now())
	return manualEntry(s), ok
}

func (m manualSuppressions) ManualEntries(apiUser string) []suppression.Entry {
	list := m.v.Suppressions(apiUser, time.Now())
	out := make([]suppression.Entry, len(list))
	for i, s := range list {
		out[i] = manualEntry(s)
	}
	return out
}

func manualEntry(s wire.Suppression) suppression.Entry {
	return suppression.Entry{Recipient: s.Address, Reason: suppression.ReasonManual, Source: s.Source, Note: s.Reason, Until: s.Until}
}
