package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/render"
)

// defaultSigningSecretKey is signingSecretRef.key when the API server has
// not defaulted it (an object written before the field had a default).
const defaultSigningSecretKey = "signing-secret"

// webhooksOutcome is what became of an account's webhooks: the signing
// secrets found, by URL, and the WebhooksReady condition to report (none
// when the account has no webhooks).
type webhooksOutcome struct {
	secrets map[string]string
	ready   bool
	reason  string
	message string
	// disabled says which webhooks their endpoints disabled; "" for none.
	disabled string
}

// webhookSecrets reads the signing secret of each of the account's
// webhooks from the Secret its signingSecretRef names, in the account's
// own namespace: a tenant names a Secret by name only, so it cannot make
// the operator read another namespace's. A webhook whose secret is missing
// or unusable is left out (its events wait in the stream for it) and
// reported; the others, and the account's mail, go on.
func (r *AccountReconciler) webhookSecrets(ctx context.Context, acc *v1.SmtpAccount) (*webhooksOutcome, error) {
	if len(acc.Spec.Webhooks) == 0 {
		return nil, nil
	}
	out := &webhooksOutcome{secrets: map[string]string{}, ready: true, reason: v1.ReasonReady}
	var problems []string
	for i, h := range acc.Spec.Webhooks {
		secret, reason, problem, err := r.signingSecret(ctx, acc.Namespace, h.SigningSecretRef)
		if err != nil {
			return nil, err
		}
		if problem == "" {
			if err := wire.CheckWebhook(wire.Webhook{URL: h.URL, Events: h.Events, Secret: secret}); err != nil {
				// Only an object admitted under a laxer CRD gets here;
				// the error names the field, never the secret.
				reason, problem = v1.ReasonWebhookInvalid, fmt.Sprintf("the relay would refuse it (%v); correct the webhook", err)
			}
		}
		if problem != "" {
			out.ready, out.reason = false, reason
			problems = append(problems, fmt.Sprintf("webhooks[%d] (%s) is not published: %s", i, h.URL, problem))
			continue
		}
		out.secrets[h.URL] = secret
	}
	out.message = fmt.Sprintf("%d webhooks published to the relay", len(acc.Spec.Webhooks))
	if len(problems) > 0 {
		out.message = strings.Join(problems, "; ")
	}
	var err error
	out.disabled, err = r.disabledWebhooks(ctx, acc)
	return out, err
}

// signingSecret is the secret ref names, or why it cannot be used: the
// reason and a message that says what to fix, never the secret.
func (r *AccountReconciler) signingSecret(ctx context.Context, namespace string, ref v1.WebhookSecretReference) (secret, reason, problem string, err error) {
	dataKey := ref.Key
	if dataKey == "" {
		dataKey = defaultSigningSecretKey
	}
	name := types.NamespacedName{Namespace: namespace, Name: ref.Name}
	m, err := r.Secrets.metadata(ctx, name)
	if err == nil && m != nil && m.Labels[render.LabelManagedBy] == render.ManagedByValue {
		// Another account's key, or a shard, would go in clear into this
		// account's credentials Secret and shard entry: the operator's
		// own Secrets are never read as a signing secret.
		return "", v1.ReasonSigningSecretNotAllowed, fmt.Sprintf("Secret %q is written by the mailfleet operator (credentials or a shard) and is never used as a signing secret; "+
			"put the signing secret in a Secret of your own", ref.Name), nil
	}
	var s *corev1.Secret
	if err == nil && m != nil {
		s, err = getSecret(ctx, r.APIReader, namespace, ref.Name)
	}
	switch {
	case err != nil:
		return "", "", "", err
	case s == nil:
		return "", v1.ReasonSigningSecretNotFound, fmt.Sprintf("Secret %q (signingSecretRef.name) does not exist in namespace %q", ref.Name, namespace), nil
	}
	secret = string(s.Data[dataKey])
	if n := len(secret); n < wire.MinWebhookSecret || n > wire.MaxWebhookSecret {
		// The length only: nothing of the secret goes into status.
		return "", v1.ReasonSigningSecretInvalid, fmt.Sprintf("key %q of Secret %q holds %d characters; want %d to %d, such as the output of `openssl rand -hex 32`",
			dataKey, ref.Name, n, wire.MinWebhookSecret, wire.MaxWebhookSecret), nil
	}
	return secret, "", "", nil
}

// disabledWebhooks reads what the relay's pods reported of the webhooks
// their endpoints disabled (410 Gone), from the status ConfigMap the
// operator made for them (kubesource.StatusConfigMap writes it), and says
// which of the account's webhooks are among them.
func (r *AccountReconciler) disabledWebhooks(ctx context.Context, acc *v1.SmtpAccount) (string, error) {
	relay := accountRelay(acc)
	var cm corev1.ConfigMap
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: wire.WebhookStatusConfigMapName(relay.Name)}, &cm)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the relay's webhook status: %w", err)
	}
	var status wire.WebhookStatus
	if json.Unmarshal([]byte(cm.Data[wire.WebhookStatusDataKey]), &status) != nil {
		return "", nil // written by the relays; an unreadable report says nothing
	}
	apiUser := render.APIUser(acc)
	var gone []string
	for i, h := range acc.Spec.Webhooks {
		if d, ok := status.Disabled[wire.WebhookKey(apiUser, h.URL)]; ok && d.APIUser == apiUser {
			gone = append(gone, fmt.Sprintf("webhooks[%d] (%s) answered %s at %s", i, h.URL, d.Reason, d.DisabledAt))
		}
	}
	if len(gone) == 0 {
		return "", nil
	}
	return strings.Join(gone, "; ") + ": the relays post nothing more to it and its events wait in the stream; " +
		"once the endpoint is fixed, remove the webhook from spec.webhooks and add it back", nil
}

// setWebhookDisabled writes the WebhookDisabled condition while one of the
// account's webhooks is disabled, with a Warning event when that is news,
// and removes it otherwise.
func setWebhookDisabled(rec events.EventRecorder, acc *v1.SmtpAccount, conds *[]metav1.Condition, out *webhooksOutcome) {
	if out == nil || out.disabled == "" {
		meta.RemoveStatusCondition(conds, v1.ConditionWebhookDisabled)
		return
	}
	if before := meta.FindStatusCondition(*conds, v1.ConditionWebhookDisabled); before == nil || before.Message != out.disabled {
		rec.Eventf(acc, nil, corev1.EventTypeWarning, v1.ReasonEndpointGone, "Reconcile", "%s", out.disabled)
	}
	meta.SetStatusCondition(conds, metav1.Condition{Type: v1.ConditionWebhookDisabled, Status: metav1.ConditionTrue,
		ObservedGeneration: acc.Generation, Reason: v1.ReasonEndpointGone, Message: out.disabled})
}

// setWebhooksReady writes the WebhooksReady condition, or removes it from
// an account without webhooks, and records a Warning event when a webhook
// is newly left out.
func setWebhooksReady(rec events.EventRecorder, acc *v1.SmtpAccount, conds *[]metav1.Condition, out *webhooksOutcome) {
	if out == nil {
		meta.RemoveStatusCondition(conds, v1.ConditionWebhooksReady)
		return
	}
	before := meta.FindStatusCondition(*conds, v1.ConditionWebhooksReady)
	status := metav1.ConditionTrue
	if !out.ready {
		status = metav1.ConditionFalse
		if before == nil || before.Reason != out.reason || before.Message != out.message {
			rec.Eventf(acc, nil, corev1.EventTypeWarning, out.reason, "Reconcile", "%s", out.message)
		}
	}
	meta.SetStatusCondition(conds, metav1.Condition{Type: v1.ConditionWebhooksReady, Status: status,
		ObservedGeneration: acc.Generation, Reason: out.reason, Message: out.message})
}

// accountWebhooks are the account's webhooks as its relay's shard carries
// them: those whose signing secret the credentials Secret holds, and that
// the relay would take. The relay refuses an account with a webhook it
// cannot post to, so a webhook the account controller has not checked yet
// (the spec changed since it last wrote the Secret) is left out here
// rather than cost its account its mail.
func accountWebhooks(acc *v1.SmtpAccount, secrets map[string]string) []wire.Webhook {
	var out []wire.Webhook
	for _, h := range acc.Spec.Webhooks {
		secret, ok := secrets[h.URL]
		w := wire.Webhook{URL: h.URL, Events: h.Events, Secret: secret}
		dup := slices.ContainsFunc(out, func(o wire.Webhook) bool { return o.URL == h.URL })
		if ok && !dup && len(out) < wire.MaxWebhooks && wire.CheckWebhook(w) == nil {
			out = append(out, w)
		}
	}
	return out
}

// accountsOfWebhookStatus enqueues the accounts with webhooks of the relay
// whose pods reported a change of their disabled webhooks.
func (r *AccountReconciler) accountsOfWebhookStatus(ctx context.Context, o client.Object) []reconcile.Request {
	relay, ok := strings.CutSuffix(o.GetName(), wire.WebhookStatusConfigMapName(""))
	if !ok || relay == "" {
		return nil
	}
	var list v1.SmtpAccountList
	if err := r.Client.List(ctx, &list, client.MatchingFields{indexAccountRelay: relayKey(o.GetNamespace(), relay)}, client.UnsafeDisableDeepCopy); err != nil {
		log.FromContext(ctx).Error(err, "list the accounts of a relay", "relay", o.GetNamespace()+"/"+relay)
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		if len(list.Items[i].Spec.Webhooks) > 0 {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return reqs
}
