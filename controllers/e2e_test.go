package controllers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/yaml"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
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
	ctx := context.Background()
	platform := newNamespace(t, nil)
	tenant := newNamespace(t, nil)
	startManager(t, func(mgr ctrl.Manager) error { return Setup(mgr, testRenderOptions) })
	createTestIssuer(t, platform, "ca")
	sink := smtpsink.Start(t)
	createRelay(t, withNamespace(platform), withQueueAndSink(t, sink), func(r *v1.SmtpRelay) {
		r.Spec.Accounts.Namespaces.From = v1.NamespacesFromAll
	})
	caPEM := playCertManager(t, platform, "mx", "mx-tls")

	relay := runRenderedRelay(t, platform, "mx")

	mkAccount(t, tenant, "acme", platform, "mx")
	if err := testClient.Create(ctx, &v1.SmtpLabel{
		ObjectMeta: metav1.ObjectMeta{Name: "news", Namespace: tenant},
		Spec:       v1.SmtpLabelSpec{AccountRef: "acme", LabelID: "1001"},
	}); err != nil {
		t.Fatal(err)
	}
	var creds corev1.Secret
	eventually(t, relayWait, func() error {
		if err := getLive(&creds, tenant, "acme-smtp-credentials"); err != nil {
			return err
		}
		if len(creds.Data[SecretKeyLabelUsernamePrefix+"1001"]) == 0 {
			return fmt.Errorf("label username not in the credentials Secret yet")
		}
		return nil
	})
	username := string(creds.Data[SecretKeyLabelUsernamePrefix+"1001"])
	key := string(creds.Data[SecretKeyPassword])
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "smtp.example.com"}

	eventually(t, relayWait, func() error { return submit(relay.addrs["submission"], tlsCfg, username, key) })
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

	setSuspended(t, tenant, "acme", true)
	eventually(t, relayWait, func() error {
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
	platform := newNamespace(t, nil)
	startManager(t, func(mgr ctrl.Manager) error { return Setup(mgr, testRenderOptions) })
	createTestIssuer(t, platform, "ca")
	createRelay(t, withNamespace(platform), withQueueAndSink(t, smtpsink.Start(t)), withRateLimit(&v1.RelayRateLimit{
		Redis: v1.RedisEndpoint{Address: redis.Addr}, FailureMode: v1.RateLimitFailureDeny,
	}))
	caPEM := playCertManager(t, platform, "mx", "mx-tls")
	relay := runRenderedRelay(t, platform, "mx")

	mkAccount(t, platform, "acme", platform, "mx", func(a *v1.SmtpAccount) { a.Spec.BudgetPerMinute = ptr.To[int32](3) })
	var creds corev1.Secret
	eventually(t, relayWait, func() error { return getLive(&creds, platform, "acme-smtp-credentials") })
	username, key := string(creds.Data[SecretKeyUsername]), string(creds.Data[SecretKeyPassword])
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "smtp.example.com"}

	// The first message waits for the credentials to reach the relay; the
	// rest must fall in the same calendar minute as it.
	redistest.WaitForTimeLeft(time.Minute, 15*time.Second)
	eventually(t, relayWait, func() error { return submit(relay.addrs["submission"], tlsCfg, username, key) })
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

// withQueueAndSink points a relay at a JetStream on loopback and delivers
// through a smarthost that is the test's sink: what the operator renders
// then works unchanged outside a cluster.
func withQueueAndSink(t *testing.T, sink *smtpsink.Sink) relayOption {
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
	eventually(t, relayWait, func() error {
		if got = sink.Messages(); len(got) < n {
			return fmt.Errorf("%d of %d messages delivered", len(got), n)
		}
		return nil
	})
	return got
}

// submit sends one message with Go's SMTP client: STARTTLS, AUTH PLAIN.
func submit(addr string, tlsCfg *tls.Config, username, key string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.StartTLS(tlsCfg); err != nil {
		return err
	}
	host := strings.Split(addr, ":")[0]
	if err := c.Auth(smtp.PlainAuth("", username, key, host)); err != nil {
		return err
	}
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
	io.WriteString(w, "Subject: from the fleet\r\n\r\nhello\r\n")
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

type renderedRelay struct {
	addrs map[string]string // listener name -> host:port
	logs  *syncbuffer.Buffer
}

// runRenderedRelay starts `mailfleet` with the rendered Deployment's args.
func runRenderedRelay(t *testing.T, ns, name string) renderedRelay {
	t.Helper()
	var dep appsv1.Deployment
	var cm corev1.ConfigMap
	var tlsSecret corev1.Secret
	eventually(t, relayWait, func() error {
		if err := getLive(&dep, ns, name); err != nil {
			return err
		}
		if err := getLive(&cm, ns, name+"-config"); err != nil {
			return err
		}
		return getLive(&tlsSecret, ns, name+"-tls")
	})
	dir := t.TempDir()
	sidecar := ""
	for _, c := range dep.Spec.Template.Spec.InitContainers {
		if c.Name == ratelimitContainerName {
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
	kubeconfig := impersonatingKubeconfig(t, dir, "system:serviceaccount:"+ns+":"+dep.Spec.Template.Spec.ServiceAccountName)

	cmd := exec.Command(mailfleetBinary(t), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	logs, exited := startLogged(t, cmd, "relay")
	r := renderedRelay{addrs: map[string]string{}, logs: logs}
	var metrics string
	eventually(t, relayWait, func() error {
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
	eventually(t, relayWait, func() error { return httpOK("http://" + metrics + "/readyz") })
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
	eventually(t, relayWait, func() error {
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

// impersonatingKubeconfig points at envtest as the given user.
func impersonatingKubeconfig(t *testing.T, dir, user string) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: testCfg.Host, CertificateAuthorityData: testCfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: testCfg.CertData, ClientKeyData: testCfg.KeyData, Token: testCfg.BearerToken,
		Impersonate: user, // "" is the test's own admin identity
	}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// mailfleetBinary builds the one binary once per test run.
func mailfleetBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mailfleet-e2e")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "mailfleet")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/mailfleet").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build mailfleet: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// httpOK is nil when url answers 200, as a kubelet probe wants.
func httpOK(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return nil
}

// startLogged starts cmd with its output collected, and kills it when the
// test ends, printing the output if the test failed. exited closes when the
// process ends.
func startLogged(t *testing.T, cmd *exec.Cmd, name string) (logs *syncbuffer.Buffer, exited <-chan struct{}) {
	t.Helper()
	logs = &syncbuffer.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("%s logs:\n%s", name, logs)
		}
	})
	return logs, done
}

// TestOperatorProcess runs `mailfleet operator` as a cluster would: it takes
// the leader Lease, serves its probes, reconciles, and exits cleanly on
// SIGTERM, releasing the Lease.
func TestOperatorProcess(t *testing.T) {
	ns := newNamespace(t, nil)
	dir := t.TempDir()
	kubeconfig := impersonatingKubeconfig(t, dir, "")
	probes := loopback.FreeAddr(t)
	cmd := exec.Command(mailfleetBinary(t), "operator",
		"--leader-elect", "--leader-election-namespace", ns,
		"--metrics-bind-address", "127.0.0.1:0", "--health-probe-bind-address", probes,
		"--relay-image", "mailfleet:test")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	logs := &syncbuffer.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("operator logs:\n%s", logs)
		}
	})
	var lease coordinationv1.Lease
	eventually(t, relayWait, func() error { return getLive(&lease, ns, "mailfleet-operator.mailfleet.io") })
	eventually(t, relayWait, func() error { return httpOK("http://" + probes + "/readyz") })
	// It reconciles: an account in its namespace gets a status.
	mkAccount(t, ns, "probe", ns, "absent")
	eventually(t, relayWait, func() error {
		var a v1.SmtpAccount
		if err := getLive(&a, ns, "probe"); err != nil {
			return err
		}
		if len(a.Status.Conditions) == 0 {
			return fmt.Errorf("no status yet")
		}
		return nil
	})
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("operator exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("operator did not exit within 30 s of SIGTERM")
	}
	if err := getLive(&lease, ns, "mailfleet-operator.mailfleet.io"); err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
		t.Fatalf("lease still held by %q after shutdown", *lease.Spec.HolderIdentity)
	}
}
