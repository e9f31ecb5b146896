//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// fleetEnv is what the scenarios need to reach the installed fleet.
type fleetEnv struct {
	service  string   // the relay Service's cluster IP
	pods     []string // the relay pods' IPs
	podPort  string   // the submission listener's port in the pods
	caFile   string   // the relay certificate's CA, as a file for swaks and Python
	tls      *tls.Config
	sinkHTTP string // the sink's HTTP API, http://ip:8080
}

func newFleetEnv(t *testing.T) *fleetEnv {
	t.Helper()
	env := &fleetEnv{}
	env.service = strings.TrimSpace(kubectl(t, "get", "-n", tenantNS, "service", relay, "-o", "jsonpath={.spec.clusterIP}"))
	env.pods = relayPodIPs(t)
	// Pods run as non-root: the Service's 587 maps to a high container port.
	env.podPort = kubectl(t, "get", "-n", tenantNS, "service", relay, "-o", `jsonpath={.spec.ports[?(@.port==587)].targetPort}`)
	ca := secretValue(t, tenantNS, relay+"-tls", "ca.crt")
	env.caFile = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(env.caFile, []byte(ca), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(ca)) {
		t.Fatal("the relay's TLS Secret has no CA certificate")
	}
	env.tls = &tls.Config{RootCAs: pool, ServerName: "smtp.example.com", MinVersion: tls.VersionTLS12}
	sink := strings.TrimSpace(kubectl(t, "get", "-n", tenantNS, "service", "smtpsink", "-o", "jsonpath={.spec.clusterIP}"))
	env.sinkHTTP = "http://" + net.JoinHostPort(sink, "8080")
	return env
}

// relayPods are the relay's pods that serve: Running and Ready, and not
// terminating (a pod draining after a rollout is still Ready until its next
// probe).
func relayPods(t *testing.T) (names, ips []string) {
	t.Helper()
	var pods struct {
		Items []struct {
			Metadata struct {
				Name              string
				DeletionTimestamp *time.Time
			}
			Status struct {
				Phase      string
				PodIP      string
				Conditions []struct{ Type, Status string }
			}
		}
	}
	getJSON(t, &pods, "pods", "-n", tenantNS, "-l", "mailfleet.io/relay="+relay)
	for _, p := range pods.Items {
		if p.Metadata.DeletionTimestamp != nil || p.Status.Phase != "Running" {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				names = append(names, p.Metadata.Name)
				ips = append(ips, p.Status.PodIP)
			}
		}
	}
	return names, ips
}

func relayPodIPs(t *testing.T) []string {
	_, ips := relayPods(t)
	return ips
}

// scenarioReady: every resource Ready, the relay pods Running and Ready
// under the restricted Pod Security level, and the relay's ACCOUNTS column.
func scenarioReady(t *testing.T, env *fleetEnv) {
	names, _ := relayPods(t)
	if len(names) != 2 || len(env.pods) != 2 {
		t.Fatalf("relay pods serving: %v, want the sample's 2", names)
	}
	// A relay waits for JetStream instead of exiting (it used to crash-loop
	// two to four times on every fresh install).
	restarts := kubectl(t, "get", "pods", "-n", tenantNS, "-l", "mailfleet.io/relay="+relay,
		"-o", `jsonpath={range .items[*]}{.metadata.name}{" "}{range .status.containerStatuses[*]}{.restartCount}{" "}{end}{range .status.initContainerStatuses[*]}{.restartCount}{" "}{end}{"\n"}{end}`)
	for _, line := range strings.Split(strings.TrimSpace(restarts), "\n") {
		f := strings.Fields(line)
		for _, n := range f[1:] {
			if n != "0" {
				t.Errorf("relay pod %s restarted (restart counts %v)", f[0], f[1:])
				break
			}
		}
	}
	if got := kubectl(t, "get", "namespace", tenantNS, "-o", `jsonpath={.metadata.labels.pod-security\.kubernetes\.io/enforce}`); got != "restricted" {
		t.Fatalf("namespace %s enforces %q, want restricted", tenantNS, got)
	}
	// What `kubectl get smtprelays` shows in docs/quickstart.md.
	eventually(t, time.Minute, func() error {
		if got := kubectl(t, "get", "smtprelay", "-n", tenantNS, relay, "-o", "jsonpath={.status.accounts}"); got != "2" {
			return fmt.Errorf("status.accounts = %q, want 2", got)
		}
		return nil
	})
	t.Logf("relay pods %v Ready; ACCOUNTS 2", env.pods)
}

// scenarioSubmit: the seeds' Python smtplib flow (STARTTLS, login as
// api_user#label_id, an inline image) and swaks, through the relay's
// Service; both get 250 #<id>#Queued and reach the sink with the label.
func scenarioSubmit(t *testing.T, env *fleetEnv) {
	key := secretValue(t, tenantNS, "shop-smtp-credentials", "password")
	addr := net.JoinHostPort(env.service, "587")
	clearSink(t, env)
	start := time.Now()
	script := `
import smtplib, ssl, sys
from email.message import EmailMessage
host, port, cafile, user, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
# The relay's certificate names smtp.example.com; the test reaches it by IP.
ctx.check_hostname = False
msg = EmailMessage()
msg["From"] = "receipts@example.com"
msg["To"] = "buyer@example.org"
msg["Subject"] = "e2e python"
msg.set_content("Thank you for your order.")
msg.add_alternative('<p>Thank you.</p><img src="cid:logo">', subtype="html")
msg.get_payload()[1].add_related(b"\x89PNG\r\n\x1a\nlogo", maintype="image", subtype="png", cid="<logo>")
s = smtplib.SMTP(host, port, timeout=30)
s.ehlo("e2e.example.com")
s.starttls(context=ctx)
s.ehlo("e2e.example.com")
s.login(user, key)
s.mail("receipts@example.com")
s.rcpt("buyer@example.org")
code, reply = s.data(msg.as_bytes())
print(code, reply.decode())
s.quit()
`
	out, err := run(context.Background(), nil, "python3", "-c", script, env.service, "587", env.caFile, "shop#receipts", key)
	if err != nil {
		t.Fatal(redact(err, key))
	}
	if !queuedReply.MatchString(strings.TrimSpace(out)) {
		t.Fatalf("Python smtplib: DATA reply %q, want 250 2.0.0 #<id>#Queued", out)
	}
	out, err = run(context.Background(), nil, "swaks", "--server", addr, "--tls", "--tls-verify", "--tls-ca-path", env.caFile,
		"--tls-sni", "smtp.example.com", "--ehlo", "e2e.example.com",
		"--auth", "LOGIN", "--auth-user", "shop", "--auth-password", key,
		"--from", "orders@example.com", "--to", "buyer@example.org", "--header", "Subject: e2e swaks")
	if err != nil {
		t.Fatal(redact(err, key))
	}
	if !regexp.MustCompile(`(?m)^<~  250 2\.0\.0 #[^#\s]+#Queued$`).MatchString(out) {
		t.Fatalf("swaks: no 250 2.0.0 #<id>#Queued in\n%s", out)
	}
	var got []sinkMessage
	eventually(t, time.Minute, func() error {
		got = sinkMessages(t, env, "e2e python", "e2e swaks")
		if len(got) < 2 {
			return fmt.Errorf("%d of 2 messages at the sink", len(got))
		}
		return nil
	})
	for _, m := range got {
		label := strings.Join(m.Headers["X-Mailfleet-Label"], ",")
		switch subject := strings.Join(m.Headers["Subject"], ""); subject {
		case "e2e python":
			if label != "account=shop; label=receipts" {
				t.Errorf("python message: X-Mailfleet-Label %q, want account=shop; label=receipts", label)
			}
		case "e2e swaks":
			if label != "account=shop" {
				t.Errorf("swaks message (no label): X-Mailfleet-Label %q, want account=shop", label)
			}
		}
	}
	t.Logf("Python smtplib and swaks through Service %s: both at the sink %v after the first connect",
		addr, time.Since(start).Round(time.Millisecond))
}

// queuedReply is the contract's answer to DATA once a message is durable.
var queuedReply = regexp.MustCompile(`^250 2\.0\.0 #[^#\s]+#Queued$`)

type sinkMessage struct {
	ID      int64               `json:"id"`
	From    string              `json:"from"`
	To      []string            `json:"to"`
	Headers map[string][]string `json:"headers"`
}

// clearSink forgets what earlier runs delivered.
func clearSink(t *testing.T, env *fleetEnv) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, env.sinkHTTP+"/messages", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// sinkMessages returns the sink's messages whose Subject is one of subjects.
func sinkMessages(t *testing.T, env *fleetEnv, subjects ...string) []sinkMessage {
	t.Helper()
	resp, err := http.Get(env.sinkHTTP + "/messages")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var all []sinkMessage
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		t.Fatal(err)
	}
	var out []sinkMessage
	for _, m := range all {
		for _, s := range subjects {
			if strings.Join(m.Headers["Subject"], "") == s {
				out = append(out, m)
			}
		}
	}
	return out
}

// submit sends one message in its own session to addr (host:port of a
// STARTTLS listener) and returns the DATA reply, or the refusal.
func submit(env *fleetEnv, addr, user, key, subject string) (string, error) {
	c, err := smtp.DialStartTLS(addr, env.tls)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, key)); err != nil {
		return "", err
	}
	if err := c.Mail("orders@example.com", nil); err != nil {
		return "", err
	}
	if err := c.Rcpt("buyer@example.org", nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	fmt.Fprintf(w, "From: orders@example.com\r\nTo: buyer@example.org\r\nSubject: %s\r\n\r\nbody\r\n", subject)
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	return resp.StatusText, nil
}

// replyCode is the SMTP code of an error from the client, or 250.
func replyCode(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	if err != nil {
		return -1
	}
	return 250
}

// scenarioBudget: two replicas share one budget through the rate-limit
// sidecars and Redis. A fresh account with a budget of 10 a minute (so no
// earlier message counts) sends 16 messages alternately to both pods: it
// gets exactly 10 × 250 and 6 × 536.
func scenarioBudget(t *testing.T, env *fleetEnv) {
	const budget, sent = 10, 16
	name := fmt.Sprintf("budget%d", time.Now().Unix())
	kubectlIn(t, fmt.Sprintf(`apiVersion: mailfleet.io/v1alpha1
kind: SmtpAccount
metadata:
  name: %s
spec:
  relayRef: {name: %s}
  budgetPerMinute: %d
`, name, relay, budget), "apply", "-n", tenantNS, "-f", "-")
	t.Cleanup(func() { kubectl(t, "delete", "smtpaccount", "-n", tenantNS, name) })
	waitReady(t, "smtpaccount", name, 2*time.Minute)
	key := secretValue(t, tenantNS, name+"-smtp-credentials", "password")
	waitPublished(t, name, fmt.Sprintf(`"budgetPerMinute":%d`, budget))
	// Budgets are per calendar minute (Redis TIME): start with enough of
	// the minute left for every message.
	if left := time.Minute - time.Duration(time.Now().Second())*time.Second; left < 25*time.Second {
		time.Sleep(left + time.Second)
	}
	counts := map[int]int{}
	byPod := map[string]map[int]int{}
	for i := range sent {
		pod := env.pods[i%len(env.pods)]
		_, err := submit(env, net.JoinHostPort(pod, env.podPort), name, key, fmt.Sprintf("budget %d", i))
		code := replyCode(err)
		if code != 250 && code != 536 {
			t.Fatalf("message %d at %s: %v", i, pod, err)
		}
		counts[code]++
		if byPod[pod] == nil {
			byPod[pod] = map[int]int{}
		}
		byPod[pod][code]++
	}
	if counts[250] != budget || counts[536] != sent-budget {
		t.Fatalf("%d accepted and %d refused with 536 of %d sent across %d pods (%v), want exactly %d accepted",
			counts[250], counts[536], sent, len(env.pods), byPod, budget)
	}
	t.Logf("budget %d/min across %d replicas: %d accepted, %d × 536; per pod %v", budget, len(env.pods), counts[250], counts[536], byPod)
}

// waitPublished waits until the relay's credentials shards publish the
// account with want in its entry, then for the relay pods' watch to carry
// it (they read the shards through the API, within a second or two).
func waitPublished(t *testing.T, apiUser, want string) {
	t.Helper()
	eventually(t, time.Minute, func() error {
		var list struct {
			Items []struct {
				Data map[string][]byte `json:"data"`
			}
		}
		getJSON(t, &list, "secrets", "-n", tenantNS, "-l", "mailfleet.io/credentials-for="+relay)
		for _, s := range list.Items {
			for _, v := range s.Data {
				if i := bytes.Index(v, []byte(`"apiUser":"`+apiUser+`"`)); i >= 0 && bytes.Contains(v[i:min(len(v), i+2000)], []byte(want)) {
					return nil
				}
			}
		}
		return fmt.Errorf("no shard publishes %s with %s", apiUser, want)
	})
	time.Sleep(3 * time.Second)
}

// scenarioAccounts: suspending, rotating and deleting an account each take
// effect at both replicas within 2 s of the kubectl command; a rotated
// account's old key keeps working through its grace period.
func scenarioAccounts(t *testing.T, env *fleetEnv) {
	key := secretValue(t, tenantNS, "shop-smtp-credentials", "password")
	// Accepted or over budget both prove the login worked.
	loginWorks := func(pod, k string) bool {
		code := replyCode(func() error {
			_, err := submit(env, net.JoinHostPort(pod, env.podPort), "shop", k, "accounts")
			return err
		}())
		return code == 250 || code == 536
	}
	atBoth := func(what string, want func(pod string) bool) time.Duration {
		t.Helper()
		start := time.Now()
		var wg sync.WaitGroup
		took := make([]time.Duration, len(env.pods))
		for i, pod := range env.pods {
			wg.Go(func() {
				for time.Since(start) < 30*time.Second {
					if want(pod) {
						took[i] = time.Since(start)
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				took[i] = -1
			})
		}
		wg.Wait()
		worst := time.Duration(0)
		for i, d := range took {
			if d < 0 {
				t.Fatalf("%s: not effective at pod %s within 30 s", what, env.pods[i])
			}
			worst = max(worst, d)
		}
		t.Logf("%s: effective at both replicas after %v (%v)", what, worst.Round(time.Millisecond), took)
		if worst > 2*time.Second {
			t.Errorf("%s took %v at the slowest replica, want within 2 s", what, worst)
		}
		return worst
	}

	kubectl(t, "patch", "smtpaccount", "-n", tenantNS, "shop", "--type=merge", "-p", `{"spec":{"suspended":true}}`)
	atBoth("suspend", func(pod string) bool { return !loginWorks(pod, key) })
	kubectl(t, "patch", "smtpaccount", "-n", tenantNS, "shop", "--type=merge", "-p", `{"spec":{"suspended":false}}`)
	atBoth("resume", func(pod string) bool { return loginWorks(pod, key) })

	kubectl(t, "annotate", "--overwrite", "smtpaccount", "-n", tenantNS, "shop", "mailfleet.io/rotate-key=e2e-"+fmt.Sprint(time.Now().Unix()))
	var newKey string
	eventually(t, 30*time.Second, func() error {
		if newKey = secretValue(t, tenantNS, "shop-smtp-credentials", "password"); newKey == key {
			return errors.New("the key is not rotated yet")
		}
		return nil
	})
	atBoth("rotate: new key", func(pod string) bool { return loginWorks(pod, newKey) })
	for _, pod := range env.pods {
		if !loginWorks(pod, key) {
			t.Errorf("rotate: the old key stopped working at %s inside its grace period", pod)
		}
	}

	kubectl(t, "delete", "smtpaccount", "-n", tenantNS, "newsletter")
	nkey := secretValue(t, tenantNS, "newsletter-api-key", "api-key")
	atBoth("delete", func(pod string) bool {
		code := replyCode(func() error {
			_, err := submit(env, net.JoinHostPort(pod, env.podPort), "newsletter", nkey, "deleted")
			return err
		}())
		return code == 535
	})
}
