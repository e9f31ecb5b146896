package kubesource

import (
	"context"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/mailfleet/mailfleet/api/wire"
)

// FieldManager names the relays' writes.
const FieldManager = "mailfleet-relay"

// StatusConfigMap writes what a relay reports to the operator into the one
// object of its namespace it may write: the ConfigMap the operator made for
// it (wire.WebhookStatusConfigMapName). The relay's Role allows a patch of
// that name and nothing else.
type StatusConfigMap struct {
	Client    kubernetes.Interface
	Namespace string
	Relay     string
}

// Report implements webhook.StatusReporter: a merge patch of the report's
// key alone, so that the operator's fields (labels, owner) and other keys
// stay as they are, and relay pods reporting the same thing at once do not
// conflict.
func (c StatusConfigMap) Report(ctx context.Context, s wire.WebhookStatus) error {
	status, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode webhook status: %w", err)
	}
	patch, _ := json.Marshal(map[string]any{"data": map[string]string{wire.WebhookStatusDataKey: string(status)}})
	name := wire.WebhookStatusConfigMapName(c.Relay)
	_, err = c.Client.CoreV1().ConfigMaps(c.Namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
	if err != nil {
		return fmt.Errorf("report to ConfigMap %s/%s: %w", c.Namespace, name, err)
	}
	return nil
}
