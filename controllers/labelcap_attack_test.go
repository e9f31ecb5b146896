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
)

// Attack (issue 12.20): a tenant could give one account any number of
// labels, each a username in its credentials Secret and an entry in a
// shard, until the 1 MiB object limit broke the account and its whole
// shard. The oldest MaxLabelsPerAccount labels are served; the rest say
// TooManyLabels.
func TestAttackTooManyLabels(t *testing.T) {
	ctx := context.Background()
	startManager(t, setupCredentialControllers)
	ns := newNamespace(t, nil)
	mkRelay(t, ns, "mx")
	waitReason(t, mkAccount(t, ns, "shop", "", "mx"), v1.ReasonReady)
	// The first label is created before the others, and among labels of one
	// timestamp second the name decides, so it is among the oldest for certain.
	waitReason(t, mkLabel(t, ns, "l-0000", "shop", "0"), v1.ReasonReady)
	// envtest runs no namespace controller: remove what later tests'
	// managers would otherwise reconcile again.
	t.Cleanup(func() {
		testClient.DeleteAllOf(context.Background(), &v1.SmtpLabel{}, client.InNamespace(ns))
		testClient.DeleteAllOf(context.Background(), &v1.SmtpAccount{}, client.InNamespace(ns))
	})
	const n = MaxLabelsPerAccount + 5
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 8 {
		wg.Go(func() {
			for i := 1 + w; i < n; i += 8 {
				l := &v1.SmtpLabel{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("l-%04d", i), Namespace: ns},
					Spec: v1.SmtpLabelSpec{AccountRef: "shop", LabelID: fmt.Sprint(i)}}
				if err := testClient.Create(ctx, l); err != nil {
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
	eventually(t, 60*time.Second, func() error {
		var list v1.SmtpLabelList
		if err := testClient.List(ctx, &list); err != nil {
			return err
		}
		tooMany, ready := 0, 0
		for _, l := range list.Items {
			if l.Namespace != ns {
				continue
			}
			switch c := meta.FindStatusCondition(l.Status.Conditions, v1.ConditionReady); {
			case c == nil:
				return fmt.Errorf("label %s not reconciled yet", l.Name)
			case c.Reason == v1.ReasonTooManyLabels:
				tooMany++
			case c.Reason == v1.ReasonReady:
				ready++
			}
		}
		if ready != MaxLabelsPerAccount || tooMany != n-MaxLabelsPerAccount {
			return fmt.Errorf("%d ready, %d TooManyLabels; want %d and %d", ready, tooMany, MaxLabelsPerAccount, n-MaxLabelsPerAccount)
		}
		return nil
	})
	waitSecret(t, ns, "shop-smtp-credentials", func(s *corev1.Secret) error {
		names := 0
		for k := range s.Data {
			if strings.HasPrefix(k, SecretKeyLabelUsernamePrefix) {
				names++
			}
		}
		if names != MaxLabelsPerAccount || len(s.Data[SecretKeyLabelUsernamePrefix+"0"]) == 0 {
			return fmt.Errorf("%d label usernames in the Secret (the oldest present: %v), want %d", names, len(s.Data[SecretKeyLabelUsernamePrefix+"0"]) > 0, MaxLabelsPerAccount)
		}
		return nil
	})
}
