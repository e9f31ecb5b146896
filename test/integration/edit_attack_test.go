package integration

import (
	"errors"
	"fmt"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
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
	platform := env.Namespace(t, nil)
	relay, tlsCfg := startFleet(t, platform, smtpsink.Start(t))
	account, creds := createLabelledAccount(t, platform, platform)
	key := string(creds.Data[render.SecretKeyPassword])
	usernames := []string{string(creds.Data[render.SecretKeyUsername]), string(creds.Data[render.SecretKeyLabelUsernamePrefix+"1001"])}
	for _, u := range usernames {
		envtestkit.Eventually(t, relayWait, func() error { return login(relay.addrs["submission"], tlsCfg, u, key) })
	}

	shard := wire.ShardSecretName("mx", wire.ShardOf("acme"))
	shardVersions := env.WatchShard(t, platform, shard)
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
		env.UpdateSpec(t, account, func() {
			account.Spec.BudgetPerMinute = ptr.To(int32(1000 + i))
			account.Spec.AllowedSenderDomains = []string{fmt.Sprintf("d%d.acme.example", i%3)}
		})
		// Each edit is let through the account controller before the next,
		// so each opens the moment the attack needs.
		envtestkit.Eventually(t, relayWait, func() error {
			var got v1.SmtpAccount
			if err := env.Get(&got, platform, "acme"); err != nil {
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

// readyNow reports a Ready=True condition that speaks of the current generation.
func readyNow(conds []metav1.Condition, generation int64) bool {
	c := meta.FindStatusCondition(conds, v1.ConditionReady)
	return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == generation
}
