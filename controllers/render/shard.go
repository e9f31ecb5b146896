package render

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
)

// ShardSecret is shard number shard of relay's credentials: data as
// wire.MarshalShard wrote it, for count accounts. The relay's Role names
// these Secrets and its pods watch them by name (wire.ShardSecretName).
func ShardSecret(relay *v1.SmtpRelay, shard int, data []byte, count int) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      wire.ShardSecretName(relay.Name, shard),
			Namespace: relay.Namespace,
			Labels: map[string]string{
				LabelManagedBy:  ManagedByValue,
				LabelRelay:      relay.Name,
				wire.ShardLabel: relay.Name,
			},
			Annotations:     map[string]string{AnnotationShardAccounts: strconv.Itoa(count)},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(relay, v1.GroupVersion.WithKind("SmtpRelay"))},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{wire.ShardDataKey: data},
	}
}

// DigestSalt is the salt of an account's key digests on a relay.
func DigestSalt(relay types.NamespacedName, apiUser string) []byte {
	return wire.DigestSalt(relay.Namespace+"/"+relay.Name, apiUser)
}

// ShardEntry is what a relay's credentials shard says of an account, with
// the digests of its valid keys and its active labels.
func ShardEntry(acc *v1.SmtpAccount, relay *v1.SmtpRelay, digests []string, labels []wire.Label) wire.Account {
	return wire.Account{
		APIUser:              APIUser(acc),
		KeyDigests:           digests,
		BudgetPerMinute:      budgetOf(acc, relay),
		MaxRecipients:        maxRecipientsOf(acc),
		SenderPolicy:         senderPolicyOf(acc),
		AllowedSenderDomains: acc.Spec.AllowedSenderDomains,
		Labels:               labels,
	}
}

// senderPolicyOf is what the shard carries: only the non-default policy, so
// shards of accounts that set none are unchanged.
func senderPolicyOf(acc *v1.SmtpAccount) string {
	if acc.Spec.SenderPolicy == wire.SenderPolicyEnvelope {
		return wire.SenderPolicyEnvelope
	}
	return ""
}

// maxRecipientsOf is the account's cap, or 0 for the relay's default (so
// shards of accounts that set none are what they were before the field).
func maxRecipientsOf(acc *v1.SmtpAccount) int {
	if acc.Spec.Limits == nil || acc.Spec.Limits.MaxRecipients == nil {
		return 0
	}
	return int(*acc.Spec.Limits.MaxRecipients)
}

func budgetOf(acc *v1.SmtpAccount, relay *v1.SmtpRelay) int {
	switch {
	case acc.Spec.BudgetPerMinute != nil:
		return int(*acc.Spec.BudgetPerMinute)
	case relay.Spec.DefaultBudgetPerMinute > 0:
		return int(relay.Spec.DefaultBudgetPerMinute)
	default:
		return wire.DefaultBudgetPerMinute
	}
}
