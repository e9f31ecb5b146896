package render

import (
	"crypto/sha256"
	"encoding/hex"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// An SmtpDomain's keys are kept in the operator's own namespace, where no
// tenant writes: the publisher trusts what they say (a key whose record DNS
// showed) to let an account send from and sign for the domain.
const (
	// LabelDomainNamespace and LabelDomain name the SmtpDomain a key
	// Secret belongs to.
	LabelDomainNamespace = "mailfleet.io/domain-namespace"
	LabelDomain          = "mailfleet.io/domain"
	// SecretKeyDKIM holds the domain's keys and their states, as JSON.
	SecretKeyDKIM = "dkim.json"
)

// DomainKeySecretName is the key Secret of the SmtpDomain namespace/name:
// a digest, since both names together may be longer than a name may be.
func DomainKeySecretName(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return "mailfleet-dkim-" + hex.EncodeToString(sum[:10])
}

// DomainKeySecret is the key Secret of the SmtpDomain namespace/name, in
// keyNamespace, holding data under SecretKeyDKIM. It has no owner: an
// owner must be in the same namespace, so the domain controller deletes it
// when the SmtpDomain goes.
func DomainKeySecret(keyNamespace, namespace, name string, data []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      DomainKeySecretName(namespace, name),
			Namespace: keyNamespace,
			Labels: map[string]string{
				LabelManagedBy:       ManagedByValue,
				LabelDomainNamespace: namespace,
				LabelDomain:          name,
			},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{SecretKeyDKIM: data},
	}
}
