package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/controllers/render"
	"github.com/mailfleet/mailfleet/internal/envtestkit"
)

// Attack (issue 12.20): a tenant could give one account any number of
// labels, each a username in its credentials Secret and an entry in a
// shard, until the 1 MiB object limit broke the account and its whole
// shard. The oldest maxLabels labels are served (here a cap of
// 20, so the test stays quick); the rest say TooManyLabels, and deleting
// a served label lets the next one in.
func TestAttackTooManyLabels(t *testing.T) {
	ctx := context.Background()
	const maxLabels = 20
	env.StartManager(t, withIndexes(
		(&AccountReconciler{MaxLabels: maxLabels}).SetupWithManager,
		(&LabelReconciler{MaxLabels: maxLabels}).SetupWithManager,
		(&CredentialsPublisher{MaxLabels: maxLabels}).SetupWithManager,
	))
	ns := env.Namespace(t, nil)
	env.CreateRelay(t, ns, "mx")
	waitReason(t, env.CreateAccount(t, ns, "shop", "", "mx"), v1.ReasonReady)
	// The first label is created before the others, and among labels of one
	// timestamp second the name decides, so it is among the oldest for certain.
	waitReason(t, env.CreateLabel(t, ns, "l-0000", "shop", "0"), v1.ReasonReady)
	// envtest runs no namespace controller: remove what later tests'
	// managers would otherwise reconcile again.
	t.Cleanup(func() {
		env.Client.DeleteAllOf(context.Background(), &v1.SmtpLabel{}, client.InNamespace(ns))
		env.Client.DeleteAllOf(context.Background(), &v1.SmtpAccount{}, client.InNamespace(ns))
	})
	const n = maxLabels + 5
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 8 {
		wg.Go(func() {
			for i := 1 + w; i < n; i += 8 {
				l := &v1.SmtpLabel{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("l-%04d", i), Namespace: ns},
					Spec: v1.SmtpLabelSpec{AccountRef: "shop", LabelID: fmt.Sprint(i)}}
				if err := env.Client.Create(ctx, l); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitServed(t, ns, maxLabels, n-maxLabels)
	env.WaitSecret(t, wait, ns, "shop-smtp-credentials", func(s *corev1.Secret) error {
		names := 0
		for k := range s.Data {
			if strings.HasPrefix(k, render.SecretKeyLabelUsernamePrefix) {
				names++
			}
		}
		if names != maxLabels || len(s.Data[render.SecretKeyLabelUsernamePrefix+"0"]) == 0 {
			return fmt.Errorf("%d label usernames in the Secret (the oldest present: %v), want %d", names, len(s.Data[render.SecretKeyLabelUsernamePrefix+"0"]) > 0, maxLabels)
		}
		return nil
	})
	// A served label leaves: the oldest of the rest takes its place.
	if err := env.Client.Delete(ctx, &v1.SmtpLabel{ObjectMeta: metav1.ObjectMeta{Name: "l-0000", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	waitServed(t, ns, maxLabels, n-1-maxLabels)
}

// waitServed waits until ready labels of ns are Ready and tooMany say
// TooManyLabels.
func waitServed(t *testing.T, ns string, ready, tooMany int) {
	t.Helper()
	ctx := context.Background()
	envtestkit.Eventually(t, 60*time.Second, func() error {
		var list v1.SmtpLabelList
		if err := env.Client.List(ctx, &list); err != nil {
			return err
		}
		gotTooMany, gotReady := 0, 0
		for _, l := range list.Items {
			if l.Namespace != ns {
				continue
			}
			switch c := meta.FindStatusCondition(l.Status.Conditions, v1.ConditionReady); {
			case c == nil:
				return fmt.Errorf("label %s not reconciled yet", l.Name)
			case c.Reason == v1.ReasonTooManyLabels:
				gotTooMany++
			case c.Reason == v1.ReasonReady:
				gotReady++
			}
		}
		if gotReady != ready || gotTooMany != tooMany {
			return fmt.Errorf("%d ready, %d TooManyLabels; want %d and %d", gotReady, gotTooMany, ready, tooMany)
		}
		return nil
	})
}
