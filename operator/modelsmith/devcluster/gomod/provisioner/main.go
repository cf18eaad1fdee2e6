// The dev cluster's dynamic PVC provisioner: sig-storage-lib-external-provisioner (the
// controller behind local-path and nfs-subdir provisioners) with a Provisioner of our
// own that makes one host directory per claim and hands it out as a hostPath PV pinned
// to the node the scheduler picked. One process, one node's disk, so no leader
// election and no metrics server; /healthz is all the dev cluster's supervisor needs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

type localPath struct {
	root string // absolute and clean, so the under-root test in Delete is a prefix test
}

// Provision runs only after the scheduler has placed the claim's first pod
// (WaitForFirstConsumer): a directory exists on one node only, so without a node the
// PV's affinity could not be set and the pod might land where its data is not.
func (p *localPath) Provision(_ context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	claim := opts.PVC
	if opts.SelectedNodeName == "" {
		return nil, controller.ProvisioningFinished, fmt.Errorf(
			"claim %s/%s has no selected node: StorageClass %q must use volumeBindingMode WaitForFirstConsumer",
			claim.Namespace, claim.Name, opts.StorageClass.Name)
	}
	// The library already refuses block claims (we do not implement BlockProvisioner);
	// checked again so the reason is ours if that ever changes.
	if claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == v1.PersistentVolumeBlock {
		return nil, controller.ProvisioningFinished, fmt.Errorf(
			"claim %s/%s asks for volumeMode Block: only Filesystem volumes (directories) are provisioned",
			claim.Namespace, claim.Name)
	}
	// ReadWriteMany is fine: the PV is pinned to one node, and every pod there shares
	// the directory. ReadOnlyMany is not: a fresh empty directory that nobody can
	// write is useless, and a hostPath PV cannot be mounted read-only by the PV alone.
	for _, mode := range claim.Spec.AccessModes {
		switch mode {
		case v1.ReadWriteOnce, v1.ReadWriteOncePod, v1.ReadWriteMany:
		default:
			return nil, controller.ProvisioningFinished, fmt.Errorf(
				"claim %s/%s asks for access mode %s: only ReadWriteOnce, ReadWriteOncePod and ReadWriteMany are supported",
				claim.Namespace, claim.Name, mode)
		}
	}

	// The PV's name first so directories sort by volume and never collide, the claim's
	// namespace and name after it so a person can tell whose data a directory holds.
	path := filepath.Join(p.root, fmt.Sprintf("%s_%s_%s", opts.PVName, claim.Namespace, claim.Name))
	if err := os.MkdirAll(path, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("making %s: %w", path, err)
	}
	// MkdirAll's mode is cut by the umask. Workloads run as uid 10001 and kubelet does
	// not apply fsGroup to hostPath volumes, so the directory must be writable by all.
	if err := os.Chmod(path, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("chmod %s: %w", path, err)
	}

	reclaim := v1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	dirOrCreate := v1.HostPathDirectoryOrCreate
	klog.InfoS("provisioned", "pv", opts.PVName, "claim", klog.KObj(claim), "node", opts.SelectedNodeName, "path", path)
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   claim.Spec.AccessModes,
			StorageClassName:              opts.StorageClass.Name,
			// Not enforced (a directory has no quota) but must be at least the request
			// for the PV controller to bind the claim.
			Capacity: v1.ResourceList{v1.ResourceStorage: claim.Spec.Resources.Requests[v1.ResourceStorage]},
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: path, Type: &dirOrCreate},
			},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{
				NodeSelectorTerms: []v1.NodeSelectorTerm{{MatchExpressions: []v1.NodeSelectorRequirement{{
					Key:      v1.LabelHostname,
					Operator: v1.NodeSelectorOpIn,
					Values:   []string{opts.SelectedNodeName},
				}}}},
			}},
		},
	}, controller.ProvisioningFinished, nil
}

// Delete is called only for PVs with reclaim policy Delete (the library keeps Retain
// ones). A PV's path is data from the API server, so only a directory inside --root
// is ever removed: an edited or foreign PV must not make us rm -rf somewhere else.
func (p *localPath) Delete(_ context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.HostPath == nil {
		return fmt.Errorf("PV %s has no hostPath: not made by this provisioner, nothing removed", pv.Name)
	}
	path := filepath.Clean(pv.Spec.HostPath.Path)
	rel, err := filepath.Rel(p.root, path)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || !filepath.IsAbs(path) {
		return fmt.Errorf("PV %s's path %s is not inside %s: refusing to remove it", pv.Name, path, p.root)
	}
	if err := os.RemoveAll(path); err != nil { // nil when already gone: Delete may be retried
		return fmt.Errorf("removing %s: %w", path, err)
	}
	klog.InfoS("deleted", "pv", pv.Name, "path", path)
	return nil
}

func main() {
	// klog logs to stderr by default; of its dozen flags only -v is worth a --help line.
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)
	flag.Var(klogFlags.Lookup("v").Value, "v", "log verbosity (klog)")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster to serve (required)")
	root := flag.String("root", "", "directory under which volume directories are made (required)")
	name := flag.String("name", "modelsmith.io/local-path", "provisioner name StorageClasses refer to")
	healthAddr := flag.String("health-addr", "", "host:port serving GET /healthz (200 once the controller runs); empty: none")
	flag.Parse()
	if *kubeconfig == "" || *root == "" {
		fmt.Fprintln(os.Stderr, "provisioner: --kubeconfig and --root are required")
		flag.Usage()
		os.Exit(2)
	}

	absRoot, err := filepath.Abs(*root)
	if err != nil {
		klog.Fatalf("--root %s: %v", *root, err)
	}
	if err := os.MkdirAll(absRoot, 0o755); err != nil {
		klog.Fatalf("making --root %s: %v", absRoot, err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("loading %s: %v", *kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		klog.Fatalf("client: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctrl := controller.NewProvisionController(ctx, client, *name, &localPath{root: absRoot},
		// A single instance per cluster: a Lease would only delay start by its duration.
		controller.LeaderElection(false),
	)

	if *healthAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
			if !ctrl.HasRun() {
				http.Error(w, "starting", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		srv := &http.Server{Addr: *healthAddr, Handler: mux}
		go func() {
			// A port already taken is fatal: the supervisor would poll someone else's.
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.Fatalf("health endpoint %s: %v", *healthAddr, err)
			}
		}()
		defer srv.Close()
	}

	klog.InfoS("starting", "name", *name, "root", absRoot, "health", *healthAddr)
	ctrl.Run(ctx) // returns when SIGINT/SIGTERM cancels ctx
	klog.InfoS("stopped")
	klog.Flush()
}
