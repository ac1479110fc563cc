package fs_test

import (
	"os"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// suite runs steps of the conformance cases as other users (opsStep).
var suite *fusetest.Suite

func TestMain(m *testing.M) {
	suite = fusetest.Setup(fusetest.SuiteOptions{Steps: fusetest.Steps{"ops": opsStep}})
	os.Exit(suite.Run(m))
}
