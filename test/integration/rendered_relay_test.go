package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/yaml"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers"
	"github.com/mailfleet/mailfleet/controllers/dnscheck"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/dnstest"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
	"github.com/mailfleet/mailfleet/internal/loopback"
	"github.com/mailfleet/mailfleet/internal/natstest"
	"github.com/mailfleet/mailfleet/internal/smtpsink"
	"github.com/mailfleet/mailfleet/internal/syncbuffer"
	"github.com/mailfleet/mailfleet/ratelimit/redistest"
	"github.com/mailfleet/mailfleet/relay/config"
)

// TestRenderedRelayServesAccounts is the fleet end to end, short of a
// kubelet: the operator renders an SmtpRelay, and the test runs the relay
// process from the very Deployment args, ConfigMap and TLS Secret it
// rendered, with the identity of the relay's ServiceAccount (impersonated,
// so the relay's Role is what is tested). Only what a pod would get from
// the kubelet is remapped: mounted files go to a temp dir, and listeners
// bind 127.0.0.1 on free ports. Then a tenant's SmtpAccount and SmtpLabel
// log in over STARTTLS with the key from the operator's credentials Secret,
// and a suspension locks them out.
func TestRenderedRelayServesAccounts(t *testing.T) {
	platform := env.Namespace(t, nil)
	tenant := env.Namespace(t, nil)
	sink := smtpsink.Start(t)
	relay, tlsCfg := startFleet(t, platform, sink, func(r *v1.SmtpRelay) {
		r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll
	})

	_, creds := createLabelledAccount(t, tenant, platform)
	username := string(creds.Data[render.SecretKeyLabelUsernamePrefix+"1001"])
	key := string(creds.Data[render.SecretKeyPassword])
	// The relay requires verified sender domains: the tenant proves
	// acme.example with the records its SmtpDomain asks for.
	verifyDomain(t, relay.dns, tenant, "acme.example")

	envtestkit.Eventually(t, relayWait, func() error { return submit(relay.addrs["submission"], tlsCfg, username, key) })
	if !strings.Contains(relay.logs.String(), `"label":"1001"`) {
		t.Fatalf("the relay did not log the label of the queued message:\n%s", relay.logs)
	}
	// Through the JetStream queue to the smarthost the spec names, with
	// the trace and label headers.
	got := waitDelivered(t, sink, 1)[0]
	for _, want := range []string{"Received: from ", "X-Mailfleet-Label: ", "1001", "Subject: from the fleet\r\n\r\nhello\r\n"} {
		if !strings.Contains(string(got.Data), want) {
			t.Errorf("delivered message lacks %q:\n%s", want, got.Data)
		}
	}
	if got.From != "news@acme.example" || len(got.To) != 1 || got.To[0] != "reader@example.com" {
		t.Errorf("delivered envelope = %s -> %v", got.From, got.To)
	}
	// Signed at submission with the SmtpDomain's key, verified against
	// what DNS publishes by go-msgauth and by dkimpy.
	checkDKIM(t, relay.dns, got.Data)

	env.SetSuspended(t, tenant, "acme", true)
	envtestkit.Eventually(t, relayWait, func() error {
		err := submit(relay.addrs["submission"], tlsCfg, username, key)
		if err == nil || !strings.Contains(err.Error(), "535") {
			return fmt.Errorf("suspended account: got %v, want 535", err)
		}
		return nil
	})
	if strings.Contains(relay.logs.String(), key) {
		t.Fatal("the key appears in the relay's logs")
	}
}

// TestRenderedRelayWithRateLimitSidecar runs the relay and its rate-limit
// sidecar from the rendered Deployment against a real redis-server: an
// account with a budget of 3 per minute gets exactly 3 messages through the
// fleet's counter, and the 4th is refused with 536 5.7.1.
func TestRenderedRelayWithRateLimitSidecar(t *testing.T) {
	ctx := context.Background()
	redis := redistest.StartRedis(t)
	platform := env.Namespace(t, nil)
	relay, tlsCfg := startFleet(t, platform, smtpsink.Start(t), func(r *v1.SmtpRelay) {
		r.Spec.RateLimit = &v1.RelayRateLimit{Redis: v1.RedisEndpoint{Address: redis.Addr}, FailureMode: v1.RateLimitFailureDeny}
		// Budgets, not sender domains, are what this test is about.
		r.Spec.SenderDomains = &v1.RelaySenderDomains{Verification: v1.SenderVerificationOptional}
	})

	env.CreateAccount(t, platform, "acme", platform, "mx", func(a *v1.SmtpAccount) { a.Spec.BudgetPerMinute = ptr.To[int32](3) })
	var creds corev1.Secret
	envtestkit.Eventually(t, relayWait, func() error { return env.Get(&creds, platform, "acme-smtp-credentials") })
	username, key := string(creds.Data[render.SecretKeyUsername]), string(creds.Data[render.SecretKeyPassword])

	// The first message waits for the credentials to reach the relay; the
	// rest must fall in the same calendar minute as it.
	redistest.WaitForTimeLeft(time.Minute, 15*time.Second)
	envtestkit.Eventually(t, relayWait, func() error { return submit(relay.addrs["submission"], tlsCfg, username, key) })
	for i := 2; i <= 3; i++ {
		if err := submit(relay.addrs["submission"], tlsCfg, username, key); err != nil {
			t.Fatalf("message %d of a budget of 3: %v", i, err)
		}
	}
	err := submit(relay.addrs["submission"], tlsCfg, username, key)
	var reply *textproto.Error
	if !errors.As(err, &reply) || reply.Code != 536 || reply.Msg != "5.7.1 Frequency limited" {
		t.Fatalf("message 4 of a budget of 3: got %v, want 536 5.7.1 Frequency limited", err)
	}
	if n, err := redis.Client().DBSize(ctx).Result(); err != nil || n == 0 {
		t.Fatalf("redis holds %d keys (%v): the budget was not counted there", n, err)
	}
}

// startFleet runs the operator's controllers and an SmtpRelay "mx" in ns,
// its queue and smarthost on loopback (withQueueAndSink) and changed by
// opts; plays cert-manager for it; and runs the relay process from what
// the operator rendered. The TLS config trusts the relay's certificate.
func startFleet(t *testing.T, ns string, sink *smtpsink.Sink, opts ...func(*v1.SmtpRelay)) (renderedRelay, *tls.Config) {
	t.Helper()
	dns := dnstest.Start(t)
	env.StartManager(t, func(mgr ctrl.Manager) error {
		return controllers.Setup(mgr, renderOptions, controllers.DomainOptions{
			DNS: &dnscheck.Servers{Addrs: []string{dns.Addr}, Timeout: time.Second}, KeyNamespace: ns,
			RecheckPending: 200 * time.Millisecond})
	})
	env.CreateIssuer(t, ns, "ca")
	env.CreateRelay(t, ns, "mx", append([]func(*v1.SmtpRelay){withQueueAndSink(t, sink)}, opts...)...)
	caPEM := env.IssueRelayCertificate(t, relayWait, ns, "mx", "mx-tls")
	relay := runRenderedRelay(t, ns, "mx")
	relay.dns = dns
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return relay, &tls.Config{RootCAs: pool, ServerName: "smtp.example.com"}
}

// createLabelledAccount creates SmtpAccount "acme" in ns, of the relay
// relayNS/mx, and its SmtpLabel "news" with label ID 1001, and returns the
// account and its credentials Secret once that lists the label.
func createLabelledAccount(t *testing.T, ns, relayNS string) (*v1.SmtpAccount, *corev1.Secret) {
	t.Helper()
	account := env.CreateAccount(t, ns, "acme", relayNS, "mx")
	env.CreateLabel(t, ns, "news", "acme", "1001")
	creds := env.WaitSecret(t, relayWait, ns, "acme-smtp-credentials", func(s *corev1.Secret) error {
		if len(s.Data[render.SecretKeyLabelUsernamePrefix+"1001"]) == 0 {
			return errors.New("label username not in the credentials Secret yet")
		}
		return nil
	})
	return account, creds
}

// withQueueAndSink points a relay at a JetStream on loopback and delivers
// through a smarthost that is the test's sink: what the operator renders
// then works unchanged outside a cluster.
func withQueueAndSink(t *testing.T, sink *smtpsink.Sink) func(*v1.SmtpRelay) {
	url := natstest.Start(t)
	host, port, err := net.SplitHostPort(sink.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return func(r *v1.SmtpRelay) {
		r.Spec.Queue.NATS = v1.NATSQueue{URL: url, Replicas: 1}
		r.Spec.Delivery.Smarthost = &v1.Smarthost{Host: host, Port: int32(p), TLS: v1.SmarthostTLSNone}
	}
}

// waitDelivered waits until the sink holds n messages and returns them.
func waitDelivered(t *testing.T, sink *smtpsink.Sink, n int) []smtpsink.Message {
	t.Helper()
	var got []smtpsink.Message
	envtestkit.Eventually(t, relayWait, func() error {
		if got = sink.Messages(); len(got) < n {
			return fmt.Errorf("%d of %d messages delivered", len(got), n)
		}
		return nil
	})
	return got
}

// authenticated opens a session with Go's SMTP client and logs in:
// STARTTLS, AUTH PLAIN.
func authenticated(addr string, tlsCfg *tls.Config, username, key string) (*smtp.Client, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return nil, err
	}
	if err := c.StartTLS(tlsCfg); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Auth(smtp.PlainAuth("", username, key, strings.Split(addr, ":")[0])); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// login opens a session, logs in over STARTTLS and quits.
func login(addr string, tlsCfg *tls.Config, username, key string) error {
	c, err := authenticated(addr, tlsCfg, username, key)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Quit()
}

// submit sends one message after logging in as login does.
func submit(addr string, tlsCfg *tls.Config, username, key string) error {
	c, err := authenticated(addr, tlsCfg, username, key)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Mail("news@acme.example"); err != nil {
		return err
	}
	if err := c.Rcpt("reader@example.com"); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	io.WriteString(w, "From: News <news@acme.example>\r\nSubject: from the fleet\r\n\r\nhello\r\n")
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

type renderedRelay struct {
	// dns is the name server the operator checks sender domains on.
	dns   *dnstest.Server
	addrs map[string]string // listener name -> host:port
	logs  *syncbuffer.Buffer
}

// runRenderedRelay starts `mailfleet` with the rendered Deployment's args.
func runRenderedRelay(t *testing.T, ns, name string) renderedRelay {
	t.Helper()
	var dep appsv1.Deployment
	var cm corev1.ConfigMap
	var tlsSecret corev1.Secret
	envtestkit.Eventually(t, relayWait, func() error {
		if err := env.Get(&dep, ns, name); err != nil {
			return err
		}
		if err := env.Get(&cm, ns, name+"-config"); err != nil {
			return err
		}
		return env.Get(&tlsSecret, ns, name+"-tls")
	})
	dir := t.TempDir()
	sidecar := ""
	for _, c := range dep.Spec.Template.Spec.InitContainers {
		if c.Name == ratelimitContainer {
			sidecar = runRenderedSidecar(t, c, cm)
		}
	}
	cfgPath := materialiseConfig(t, dir, cm.Data["relay.yaml"], tlsSecret, sidecar)
	container := dep.Spec.Template.Spec.Containers[0]
	args := append([]string(nil), container.Args...)
	for i := range args {
		if i > 0 && args[i-1] == "--config" {
			args[i] = cfgPath
		}
	}
	// The ServiceAccount's user without the groups a pod's token also
	// carries: the Role the operator rendered must be enough on its own.
	kubeconfig := writeKubeconfig(t, dir, envtestkit.Identity{User: "system:serviceaccount:" + ns + ":" + dep.Spec.Template.Spec.ServiceAccountName})

	cmd := exec.Command(mailfleetBinary(t), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	logs, exited := startLogged(t, cmd, "relay")
	r := renderedRelay{addrs: map[string]string{}, logs: logs}
	var metrics string
	envtestkit.Eventually(t, relayWait, func() error {
		select {
		case <-exited:
			t.Fatalf("relay exited:\n%s", logs)
		default:
		}
		for _, line := range strings.Split(logs.String(), "\n") {
			var ev struct{ Msg, Listener, Address, Metrics string }
			if json.Unmarshal([]byte(line), &ev) != nil {
				continue
			}
			switch ev.Msg {
			case "listening":
				r.addrs[ev.Listener] = ev.Address
			case "relay started":
				metrics = ev.Metrics
			}
		}
		if metrics == "" {
			return fmt.Errorf("relay not started yet")
		}
		return nil
	})
	// Ready means the credentials shards were listed with the relay's own
	// identity: the Role the operator rendered is enough.
	envtestkit.Eventually(t, relayWait, func() error { return httpOK("http://" + metrics + "/readyz") })
	return r
}

// runRenderedSidecar starts the rate-limit sidecar with the rendered
// container's args and env, moved to free loopback ports, waits for the
// startup probe's path to answer, and returns its gRPC address.
func runRenderedSidecar(t *testing.T, c corev1.Container, cm corev1.ConfigMap) string {
	t.Helper()
	grpcAddr, opsAddr := loopback.FreeAddr(t), loopback.FreeAddr(t)
	args := append([]string(nil), c.Args...)
	for i := 1; i < len(args); i++ {
		switch args[i-1] {
		case "--listen":
			args[i] = grpcAddr
		case "--metrics-address":
			args[i] = opsAddr
		case "--redis-password-file", "--redis-ca-file":
			t.Fatalf("the test does not mount %s", args[i-1])
		}
	}
	cmd := exec.Command(mailfleetBinary(t), args...)
	cmd.Env = os.Environ()
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			if e.ValueFrom.ConfigMapKeyRef.Name != cm.Name {
				t.Fatalf("env %s comes from ConfigMap %s, not the relay's", e.Name, e.ValueFrom.ConfigMapKeyRef.Name)
			}
			v = cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
		}
		cmd.Env = append(cmd.Env, e.Name+"="+v)
	}
	logs, exited := startLogged(t, cmd, "sidecar")
	path := c.StartupProbe.HTTPGet.Path
	envtestkit.Eventually(t, relayWait, func() error {
		select {
		case <-exited:
			t.Fatalf("sidecar exited:\n%s", logs)
		default:
		}
		return httpOK("http://" + opsAddr + path)
	})
	return grpcAddr
}

// materialiseConfig writes the mounted files a pod would see into dir and
// returns the config path; listeners and metrics move to free loopback ports.
func materialiseConfig(t *testing.T, dir, relayYAML string, tlsSecret corev1.Secret, sidecar string) string {
	t.Helper()
	var c config.Config
	if err := yaml.UnmarshalStrict([]byte(relayYAML), &c); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey} {
		if err := os.WriteFile(filepath.Join(dir, f), tlsSecret.Data[f], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.TLS = &config.TLS{CertFile: filepath.Join(dir, corev1.TLSCertKey), KeyFile: filepath.Join(dir, corev1.TLSPrivateKeyKey)}
	for i := range c.Listeners {
		c.Listeners[i].Address = "127.0.0.1:0"
	}
	if c.HTTPAPI != nil {
		c.HTTPAPI.Address = "127.0.0.1:0"
	}
	c.MetricsAddress = "127.0.0.1:0"
	if c.Budget.Sidecar != nil {
		if sidecar == "" {
			t.Fatal("the relay config asks a sidecar the Deployment does not run")
		}
		c.Budget.Sidecar.Address = sidecar
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
