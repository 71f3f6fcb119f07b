// awo decide as a Jenkins pipeline stage (paste it into the `stages` of your Jenkinsfile): gates the change
// the build checks out, marks the build UNSTABLE on a senior review and fails it on a block. The work is done
// by ci/awo-decide.sh of the awo repository, cloned from AWO_SOURCE, which awo is also installed from.
// The change: a multibranch pull request decides origin/CHANGE_TARGET..GIT_COMMIT, a branch build
// GIT_PREVIOUS_SUCCESSFUL_COMMIT..GIT_COMMIT, a first build GIT_COMMIT alone (check out with full history).
stage('awo decide') {
    environment {
        AWO_SOURCE = 'https://github.com/your-org/awo.git'
        AWO_SOURCE_REF = 'main'
        AWO_CI_MODE = 'enforce'
        AWO_CI_ENVIRONMENT = 'production'
        AWO_CI_DECISION_FILE = 'awo-decision.json'
    }
    steps {
        script {
            // returnStatus: the exit code comes back instead of failing the step, so 3 and 4 can be told apart.
            def status = sh(returnStatus: true, script: '''
                AWO_HOME="${AWO_HOME:-$WORKSPACE/.awo}"
                if [ ! -f "$AWO_HOME/ci/awo-decide.sh" ]; then
                    git clone --depth 1 --branch "$AWO_SOURCE_REF" "$AWO_SOURCE" "$AWO_HOME" || exit 2
                fi
                export AWO_CI_INSTALL_FROM="${AWO_CI_INSTALL_FROM-$AWO_HOME}"
                if [ -n "$AWO_CI_INSTALL_FROM" ]; then
                    python3 -m venv "$AWO_HOME/.venv" && . "$AWO_HOME/.venv/bin/activate" || exit 2
                fi
                bash "$AWO_HOME/ci/awo-decide.sh"
            ''')
            archiveArtifacts artifacts: 'awo-decision.json', allowEmptyArchive: true
            if (status == 3) {
                unstable('awo: senior review required (see awo-decision.json)')
            } else if (status == 4) {
                error('awo: the change is blocked (see awo-decision.json)')
            } else if (status != 0) {
                error("awo decide failed with exit code ${status}: the change was not decided")
            }
        }
    }
}
