// An OCI registry for the dev cluster's images: CNCF distribution's registry with only
// the filesystem storage driver. Its own cmd/registry also links the S3, GCS and Azure
// drivers (and their SDKs), the pull-through proxy and three auth schemes; none is
// needed to serve images from a local folder on loopback. Run as
// `registry serve config.yml`.
package main

import (
	"os"

	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	if err := registry.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}
