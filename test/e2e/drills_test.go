//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// servedSerial opens a STARTTLS session to addr and returns the serial of
// the certificate the relay serves.
func servedSerial(env *fleetEnv, addr string) (string, error) {
	var serial string
	cfg := env.tls.Clone()
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		serial = cs.PeerCertificates[0].SerialNumber.String()
		return nil
	}
	c, err := smtp.DialStartTLS(addr, cfg)
	if err != nil {
		return "", err
	}
	c.Quit()
	return serial, nil
}

// secretSerial is the serial of the certificate in the relay's TLS Secret
// (one read of the Secret: cert-manager may be writing it).
func secretSerial(t *testing.T) string {
	t.Helper()
	block, _ := pem.Decode([]byte(secretValue(t, tenantNS, relay+"-tls", "tls.crt")))
	if block == nil {
		t.Fatal("the relay's TLS Secret holds no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.String()
}

// scenarioCertificateRenewal: cert-manager renews the relay's certificate
// (triggered as cmctl renew does); the Secret changes, kubelet updates the
// mounted volume, and new sessions at both replicas get the new certificate
// while a session opened before the renewal still sends its message.
func scenarioCertificateRenewal(t *testing.T, env *fleetEnv) {
	key := secretValue(t, tenantNS, "shop-smtp-credentials", "password")
	old := secretSerial(t)
	open, err := smtp.DialStartTLS(net.JoinHostPort(env.pods[0], env.podPort), env.tls)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := open.Auth(sasl.NewPlainClient("", "shop", key)); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	kubectl(t, "patch", "certificate", "-n", tenantNS, relay, "--subresource=status", "--type=json", "-p",
		fmt.Sprintf(`[{"op":"add","path":"/status/conditions/-","value":{"type":"Issuing","status":"True","reason":"ManuallyTriggered","message":"renewed by the e2e test","lastTransitionTime":%q}}]`,
			time.Now().UTC().Format(time.RFC3339)))
	var renewed string
	eventually(t, 2*time.Minute, func() error {
		if renewed = secretSerial(t); renewed == old {
			return errors.New("the TLS Secret still holds the old certificate")
		}
		return nil
	})
	inSecret := time.Since(start)
	took := make([]time.Duration, len(env.pods))
	for i, pod := range env.pods {
		eventually(t, 3*time.Minute, func() error {
			got, err := servedSerial(env, net.JoinHostPort(pod, env.podPort))
			if err != nil {
				return err
			}
			if got != renewed {
				return fmt.Errorf("pod %s still serves serial %s", pod, got)
			}
			return nil
		})
		took[i] = time.Since(start)
	}
	// The session opened with the old certificate is still usable.
	if err := sendOn(open, "renewal"); err != nil {
		t.Fatalf("a session opened before the renewal: %v", err)
	}
	t.Logf("certificate renewed: new serial in the Secret after %v, served by the pods after %v (kubelet's volume sync); the open session still sent",
		inSecret.Round(time.Millisecond), took)
}

// sendOn sends one message on an authenticated session.
func sendOn(c *smtp.Client, subject string) error {
	if err := c.Mail("orders@example.com", nil); err != nil {
		return err
	}
	if err := c.Rcpt("buyer@example.org", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "From: orders@example.com\r\nTo: buyer@example.org\r\nSubject: %s\r\n\r\nbody\r\n", subject)
	return w.Close()
}

// prepareLoad lifts the shop account's budget out of the way of a load run
// (back to the sample's 1,000 when the test ends), empties the sink, and
// returns the account's key.
func prepareLoad(t *testing.T, env *fleetEnv) string {
	t.Helper()
	kubectl(t, "patch", "smtpaccount", "-n", tenantNS, "shop", "--type=merge", "-p", `{"spec":{"budgetPerMinute":1000000}}`)
	t.Cleanup(func() {
		kubectl(t, "patch", "smtpaccount", "-n", tenantNS, "shop", "--type=merge", "-p", `{"spec":{"budgetPerMinute":1000}}`)
	})
	waitPublished(t, "shop", `"budgetPerMinute":1000000`)
	clearSink(t, env)
	return secretValue(t, tenantNS, "shop-smtp-credentials", "password")
}

// loadResult is what a load run saw.
type loadResult struct {
	mu    sync.Mutex
	acked map[string]bool // X-Test-Id of every message answered 250
	errs  int             // sessions that failed and were reopened
	// cut counts messages whose DATA was sent but whose session ended
	// without any reply: what a drain must never do.
	cut int
	// refused counts SMTP refusals by code (451 while the queue is away).
	refused map[int]int
}

// runLoad sends n messages from `sessions` concurrent sessions to addr,
// many per session, reopening a session that fails. Each message carries
// an X-Test-Id; those answered 250 are recorded. progress is called with
// the count acknowledged so far after each acknowledgement.
func runLoad(ctx context.Context, env *fleetEnv, addr, key, runName string, n, sessions int, progress func(int)) *loadResult {
	res := &loadResult{acked: map[string]bool{}, refused: map[int]int{}}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range sessions {
		wg.Go(func() {
			for ctx.Err() == nil {
				if int(next.Load()) >= n {
					return
				}
				c, err := smtp.DialStartTLS(addr, env.tls)
				if err == nil {
					err = c.Auth(sasl.NewPlainClient("", "shop", key))
				}
				afterData := false
				for err == nil && ctx.Err() == nil {
					i := int(next.Add(1)) - 1
					if i >= n {
						break
					}
					id := fmt.Sprintf("%s-%05d", runName, i)
					if afterData, err = sendTagged(c, id); err == nil {
						res.mu.Lock()
						res.acked[id] = true
						k := len(res.acked)
						res.mu.Unlock()
						if progress != nil {
							progress(k)
						}
					}
				}
				if c != nil {
					c.Close()
				}
				if err != nil {
					var se *smtp.SMTPError
					res.mu.Lock()
					res.errs++
					if errors.As(err, &se) {
						res.refused[se.Code]++
					} else if afterData {
						res.cut++
					}
					res.mu.Unlock()
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	return res
}

// sendTagged sends one message with an X-Test-Id; afterData says whether
// the failure, if any, came after the whole body was written.
func sendTagged(c *smtp.Client, id string) (afterData bool, err error) {
	if err := c.Mail("orders@example.com", nil); err != nil {
		return false, err
	}
	if err := c.Rcpt("buyer@example.org", nil); err != nil {
		return false, err
	}
	w, err := c.Data()
	if err != nil {
		return false, err
	}
	// About 2 KB of body in 76-character lines (RFC 5322 keeps lines under
	// 1,000 octets; the sink, like many servers, refuses longer ones).
	fmt.Fprintf(w, "From: orders@example.com\r\nTo: buyer@example.org\r\nSubject: load\r\nX-Test-Id: %s\r\n\r\n%s", id,
		strings.Repeat(strings.Repeat("x", 76)+"\r\n", 26))
	return true, w.Close()
}

// startLoad sends without pause from 20 sessions through the relay's
// Service until the returned finish is called; finish stops the load and
// returns what it saw (calling it again returns the same).
func startLoad(env *fleetEnv, key, runName string) (finish func() *loadResult) {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan *loadResult, 1)
	go func() {
		done <- runLoad(ctx, env, net.JoinHostPort(env.service, "587"), key, runName, 1_000_000, 20, nil)
	}()
	var res *loadResult
	return func() *loadResult {
		stop()
		if res == nil {
			res = <-done
		}
		return res
	}
}

// delivered counts the sink's messages per X-Test-Id with the run's prefix.
func delivered(t *testing.T, env *fleetEnv, runName string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range sinkMessages(t, env, "load") {
		for _, id := range m.Headers["X-Test-Id"] {
			if strings.HasPrefix(id, runName+"-") {
				out[id]++
			}
		}
	}
	return out
}

// checkDelivered waits until every acknowledged message is at the sink and
// reports duplicates and messages delivered without an acknowledgement.
func checkDelivered(t *testing.T, env *fleetEnv, runName string, res *loadResult, within time.Duration) {
	t.Helper()
	var got map[string]int
	eventually(t, within, func() error {
		got = delivered(t, env, runName)
		missing := 0
		for id := range res.acked {
			if got[id] == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d acknowledged messages not delivered yet", missing, len(res.acked))
		}
		return nil
	})
	dups, unacked := 0, 0
	for id, c := range got {
		dups += c - 1
		if !res.acked[id] {
			unacked++
		}
	}
	t.Logf("%s: %d acknowledged, all delivered; %d duplicates (%.2f%%), %d delivered without an acknowledgement (cut mid-DATA)",
		runName, len(res.acked), dups, 100*float64(dups)/float64(max(1, len(res.acked))), unacked)
}

// scenarioKillAndScale: 5,000 messages through the Service while one relay
// pod is deleted with --grace-period=0 --force, then the relay is scaled
// from 2 to 1 with messages still queued. Every acknowledged message must
// reach the sink.
func scenarioKillAndScale(t *testing.T, env *fleetEnv) {
	const n = 5000
	key := prepareLoad(t, env)
	runName := fmt.Sprintf("kill%d", time.Now().Unix())

	// A serving pod: the first listed may be one of a finished rollout,
	// already gone (the first full run from an empty cluster picked one).
	names, _ := relayPods(t)
	if len(names) == 0 {
		t.Fatal("no relay pod serves")
	}
	victim := names[0]
	var killed atomic.Bool
	start := time.Now()
	res := runLoad(context.Background(), env, net.JoinHostPort(env.service, "587"), key, runName, n, 20, func(acked int) {
		if acked >= n/3 && killed.CompareAndSwap(false, true) {
			go func() {
				if _, err := run(context.Background(), nil, kubectlBin, "delete", "pod", "-n", tenantNS, victim, "--grace-period=0", "--force", "--wait=false"); err != nil {
					t.Errorf("force-delete %s: %v", victim, err)
				}
			}()
		}
	})
	loadTime := time.Since(start)
	kubectl(t, "scale", "smtprelay", "-n", tenantNS, relay, "--replicas=1")
	t.Cleanup(func() {
		kubectl(t, "scale", "smtprelay", "-n", tenantNS, relay, "--replicas=2")
		kubectl(t, "rollout", "status", "-n", tenantNS, "deploy/"+relay, "--timeout=5m")
		waitReady(t, "smtprelay", relay, 5*time.Minute)
	})
	t.Logf("%d of %d acknowledged in %v (%.0f/s) through the Service while pod %s was force-deleted; %d sessions reopened; then scaled 2 → 1",
		len(res.acked), n, loadTime.Round(time.Millisecond), float64(len(res.acked))/loadTime.Seconds(), victim, res.errs)
	// A message the killed pod was delivering comes back after the queue's
	// AckWait (a minute).
	checkDelivered(t, env, runName, res, 5*time.Minute)
}

// scenarioUpgradeUnderLoad: helm upgrade to a new image tag while clients
// send without pause. The operator rolls the relay pods; each old pod gets
// SIGTERM and drains within its termination grace. No acknowledged message
// is lost, and no client has its session cut after DATA without a reply.
func scenarioUpgradeUnderLoad(t *testing.T, env *fleetEnv) {
	key := prepareLoad(t, env)
	// The same image under a second tag: what changes is the tag, as in a
	// release.
	tag := imageTag(t)
	next := tag + "-next"
	if _, err := run(context.Background(), nil, "ctr", "-n", "k8s.io", "--address", containerdSocket(),
		"images", "tag", "--force", "mailfleet.test/mailfleet:"+tag, "mailfleet.test/mailfleet:"+next); err != nil {
		t.Fatal(err)
	}
	runName := fmt.Sprintf("upgrade%d", time.Now().Unix())
	finish := startLoad(env, key, runName)
	defer finish()
	time.Sleep(3 * time.Second)
	start := time.Now()
	helm(t, "upgrade", "mailfleet", "charts/mailfleet", "-n", systemNS, "--reuse-values",
		"--set", "image.tag="+next, "--wait", "--timeout", "10m")
	eventually(t, 5*time.Minute, func() error {
		got := kubectl(t, "get", "-n", tenantNS, "deploy", relay, "-o", "jsonpath={.spec.template.spec.containers[0].image}")
		if got != "mailfleet.test/mailfleet:"+next {
			return fmt.Errorf("relay Deployment runs %q", got)
		}
		return nil
	})
	kubectl(t, "rollout", "status", "-n", tenantNS, "deploy/"+relay, "--timeout=10m")
	rolled := time.Since(start)
	time.Sleep(3 * time.Second)
	res := finish()
	t.Logf("helm upgrade %s -> %s under load: relays rolled in %v; %d messages acknowledged, %d sessions reopened, %d cut after DATA without a reply",
		tag, next, rolled.Round(time.Millisecond), len(res.acked), res.errs, res.cut)
	if res.cut > 0 {
		t.Errorf("%d messages had their session cut after DATA with no reply: the drain should answer or refuse, never drop", res.cut)
	}
	checkDelivered(t, env, runName, res, 5*time.Minute)
	env.pods = relayPodIPs(t)
}

// containerdSocket is the cluster's containerd, from bin/cluster/env's
// default.
func containerdSocket() string {
	if s := os.Getenv("CONTAINERD_ADDRESS"); s != "" {
		return s
	}
	return "/run/mailfleet-cluster/containerd/containerd.sock"
}

// scenarioBackendsLost: the chart's Redis pod and then one of the three
// NATS pods are deleted while clients send. The promise: with failureMode
// Allow, budgets fall back to each pod's share and mail keeps flowing; a
// queue node lost leaves a quorum, so writes go on (a refusal is a 451 the
// client retries, never a silent loss); every acknowledged message is
// delivered.
func scenarioBackendsLost(t *testing.T, env *fleetEnv) {
	key := prepareLoad(t, env)
	runName := fmt.Sprintf("backends%d", time.Now().Unix())
	finish := startLoad(env, key, runName)
	defer finish()
	time.Sleep(3 * time.Second)
	kubectl(t, "delete", "pod", "-n", systemNS, "-l", "app.kubernetes.io/component=redis", "--grace-period=0", "--force", "--wait=false")
	time.Sleep(10 * time.Second)
	kubectl(t, "delete", "pod", "-n", systemNS, "mailfleet-nats-1", "--grace-period=0", "--force", "--wait=false")
	time.Sleep(15 * time.Second)
	res := finish()
	kubectl(t, "rollout", "status", "-n", systemNS, "deploy/mailfleet-redis", "--timeout=5m")
	kubectl(t, "rollout", "status", "-n", systemNS, "statefulset/mailfleet-nats", "--timeout=5m")
	t.Logf("Redis pod and NATS node 1 deleted under load: %d acknowledged in 28 s, refusals by code %v, %d sessions reopened, %d cut after DATA without a reply",
		len(res.acked), res.refused, res.errs, res.cut)
	if res.refused[536] > 0 {
		t.Errorf("%d messages refused with 536 while Redis was away: failureMode Allow must fall back to the pod's share, and 536 means over budget", res.refused[536])
	}
	if res.cut > 0 {
		t.Errorf("%d sessions cut after DATA without a reply", res.cut)
	}
	checkDelivered(t, env, runName, res, 5*time.Minute)
}
