package controllers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/smtp"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/smtpsink"
)

// Attack (issue 12.18): every edit of an account unpublished it until the
// account controller had written Ready for the new generation, so a client
// logging in during that moment got 535: a careless tenant's own edits, or
// a GitOps tool re-applying, locked its senders out. Here a client logs in
// continuously, as the account and the label it logs in through, while the
// account is edited 100 times; no login is refused, and no version of the
// shard the relay watches leaves the account out.
func TestAttackEditsNeverRevoke(t *testing.T) {
	platform := newNamespace(t, nil)
	startManager(t, func(mgr ctrl.Manager) error { return Setup(mgr, testRenderOptions) })
	createTestIssuer(t, platform, "ca")
	createRelay(t, withNamespace(platform), withQueueAndSink(t, smtpsink.Start(t)))
	caPEM := playCertManager(t, platform, "mx", "mx-tls")
	relay := runRenderedRelay(t, platform, "mx")
	account := mkAccount(t, platform, "acme", platform, "mx")
	mkLabel(t, platform, "news", "acme", "1001")
	var creds corev1.Secret
	eventually(t, relayWait, func() error {
		if err := getLive(&creds, platform, "acme-smtp-credentials"); err != nil {
			return err
		}
		if len(creds.Data[SecretKeyLabelUsernamePrefix+"1001"]) == 0 {
			return errors.New("label username not in the credentials Secret yet")
		}
		return nil
	})
	key := string(creds.Data[SecretKeyPassword])
	usernames := []string{string(creds.Data[SecretKeyUsername]), string(creds.Data[SecretKeyLabelUsernamePrefix+"1001"])}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "smtp.example.com"}
	for _, u := range usernames {
		eventually(t, relayWait, func() error { return login(relay.addrs["submission"], tlsCfg, u, key) })
	}

	shard := wire.ShardSecretName("mx", wire.ShardOf("acme"))
	shardVersions := watchShard(t, platform, shard)
	var logins, refused atomic.Int64
	var firstRefusal atomic.Value
	stop := make(chan struct{})
	var clients sync.WaitGroup
	for i := range 2 {
		clients.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				err := login(relay.addrs["submission"], tlsCfg, usernames[(n+i)%2], key)
				logins.Add(1)
				var reply *textproto.Error
				if errors.As(err, &reply) && reply.Code == 535 {
					refused.Add(1)
					firstRefusal.CompareAndSwap(nil, err.Error())
				} else if err != nil {
					firstRefusal.CompareAndSwap(nil, "unexpected: "+err.Error())
				}
			}
		})
	}
	for i := range 100 {
		updateSpec(t, account, func() {
			account.Spec.BudgetPerMinute = ptr.To(int32(1000 + i))
			account.Spec.AllowedSenderDomains = []string{fmt.Sprintf("d%d.acme.example", i%3)}
		})
		// Each edit is let through the account controller before the next,
		// so each opens the moment the attack needs.
		eventually(t, relayWait, func() error {
			var got v1.SmtpAccount
			if err := getLive(&got, platform, "acme"); err != nil {
				return err
			}
			if !readyNow(got.Status.Conditions, got.Generation) {
				return fmt.Errorf("account not ready at generation %d", got.Generation)
			}
			return nil
		})
	}
	close(stop)
	clients.Wait()
	if refused.Load() > 0 || firstRefusal.Load() != nil {
		t.Fatalf("%d of %d logins refused during 100 edits; first: %v", refused.Load(), logins.Load(), firstRefusal.Load())
	}
	versions := shardVersions()
	for i, accounts := range versions {
		if !strings.Contains(accounts, `"acme"`) {
			t.Fatalf("shard version %d of %d leaves acme out: %s", i+1, len(versions), accounts)
		}
	}
	if last := versions[len(versions)-1]; !strings.Contains(last, "1099") {
		t.Errorf("the last edit (budget 1099) was not published: %s", last)
	}
	t.Logf("%d logins, %d shard versions, none without the account", logins.Load(), len(versions))
}

// login opens a session, logs in over STARTTLS and quits.
func login(addr string, tlsCfg *tls.Config, username, key string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.StartTLS(tlsCfg); err != nil {
		return err
	}
	if err := c.Auth(smtp.PlainAuth("", username, key, strings.Split(addr, ":")[0])); err != nil {
		return err
	}
	return c.Quit()
}

// watchShard records the content of every version of a shard Secret from
// now on; the returned function stops the watch and returns them.
func watchShard(t *testing.T, ns, name string) func() []string {
	t.Helper()
	w, err := kubernetes.NewForConfigOrDie(testCfg).CoreV1().Secrets(ns).Watch(context.Background(),
		metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		t.Fatal(err)
	}
	var versions []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			if s, ok := ev.Object.(*corev1.Secret); ok && ev.Type != watch.Error {
				versions = append(versions, string(s.Data[wire.ShardDataKey]))
			}
		}
	}()
	return func() []string {
		w.Stop()
		<-done
		return versions
	}
}

// readyNow reports a Ready=True condition that speaks of the current generation.
func readyNow(conds []metav1.Condition, generation int64) bool {
	c := meta.FindStatusCondition(conds, v1.ConditionReady)
	return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == generation
}
