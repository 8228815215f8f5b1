{{/* The chart name, cut to the 63 characters of a DNS label. */}}
{{- define "deepmoney.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: RELEASE-deepmoney, or the release name alone when it already holds the chart's. */}}
{{- define "deepmoney.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label wants it. */}}
{{- define "deepmoney.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every object carries. */}}
{{- define "deepmoney.labels" -}}
helm.sh/chart: {{ include "deepmoney.chart" . }}
{{ include "deepmoney.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: deepmoney
{{- end }}

{{/* The labels a selector matches (never change between upgrades). */}}
{{- define "deepmoney.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deepmoney.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The MLflow server's name and labels. */}}
{{- define "deepmoney.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "deepmoney.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "deepmoney.mlflow.selectorLabels" -}}
{{ include "deepmoney.selectorLabels" . }}
app.kubernetes.io/component: mlflow
{{- end }}

{{/* The pipeline runs' ServiceAccount. */}}
{{- define "deepmoney.pipeline.serviceAccountName" -}}
{{- if .Values.pipeline.serviceAccount.create }}
{{- default (printf "%s-pipeline" (include "deepmoney.fullname" .)) .Values.pipeline.serviceAccount.name | trunc 63 }}
{{- else }}
{{- required "pipeline.serviceAccount.name is required when pipeline.serviceAccount.create is false" .Values.pipeline.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: repository:tag, the tag defaulting to the chart's appVersion (never latest). */}}
{{- define "deepmoney.image" -}}
{{- $tag := default .Chart.AppVersion .image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image tag 'latest' is refused: pin a version" }}
{{- end }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}

{{/* The hardened container securityContext. */}}
{{- define "deepmoney.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The hardened pod securityContext (uid/gid of the image's user). */}}
{{- define "deepmoney.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsUser }}
fsGroup: {{ .Values.securityContext.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Serving: the LLM InferenceService's name, the graph's name (the release's full name) and a step's name. */}}
{{- define "deepmoney.llm.name" -}}
{{- printf "%s-llm" (include "deepmoney.fullname" .) | trunc 53 | trimSuffix "-" }}
{{- end }}
{{- define "deepmoney.graph.name" -}}
{{- include "deepmoney.fullname" . | trunc 53 | trimSuffix "-" }}
{{- end }}
{{- define "deepmoney.step.name" -}}
{{- printf "%s-%s" (include "deepmoney.graph.name" .root) .step }}
{{- end }}

{{/* The chain's steps in the graph's order: the intake first when it is enabled (serving/payload.py STEPS). */}}
{{- define "deepmoney.steps" -}}
{{- $steps := list "sectors" "method" "data" "analysis" }}
{{- if .Values.serving.intake.enabled }}{{ $steps = prepend $steps "intake" }}{{ end }}
{{- join " " $steps }}
{{- end }}

{{/* The OpenAI base URL of the LLM inside the cluster (Standard mode: the predictor's Service). */}}
{{- define "deepmoney.llm.url" -}}
{{- printf "http://%s-predictor.%s.svc.cluster.local/openai/v1" (include "deepmoney.llm.name" .) .Release.Namespace }}
{{- end }}

{{/* The serving runtime the LLM runs on. */}}
{{- define "deepmoney.llm.runtime" -}}
{{- $llm := .Values.serving.llm }}
{{- default (ternary "kserve-huggingfaceserver-multinode" "kserve-huggingfaceserver" (gt (int $llm.nodes) 1)) $llm.runtime.name }}
{{- end }}

{{/* Labels of a serving object (KServe copies them onto its pods). */}}
{{- define "deepmoney.serving.labels" -}}
{{ include "deepmoney.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The LLM's resources per node: the node's share of the weights + /dev/shm + 16Gi unless memory is given. */}}
{{- define "deepmoney.llm.resources" -}}
{{- $llm := .Values.serving.llm }}
{{- $memory := $llm.memory }}
{{- if not $memory }}
{{- $shm := trimSuffix "Gi" $llm.shmSize | float64 }}
{{- $memory = printf "%dGi" (int (ceil (addf (divf $llm.modelSizeGB $llm.nodes) $shm 16))) }}
{{- end }}
{{- $amounts := dict "cpu" $llm.cpu "memory" $memory $llm.gpuResource (toString $llm.tensorParallelSize) }}
requests:
  {{- toYaml $amounts | nindent 2 }}
limits:
  {{- toYaml $amounts | nindent 2 }}
{{- end }}

{{/* Probe failures that cover the LLM's start-up: 300 s + the weights read at 100 MB/s, in 10 s periods. */}}
{{- define "deepmoney.llm.startupFailures" -}}
{{- $allowance := add 300 (int (ceil (divf .Values.serving.llm.modelSizeGB 0.1))) }}
{{- int (ceil (divf $allowance 10)) }}
{{- end }}

{{/* vLLM's context and concurrency limits in the Hugging Face server's syntax. */}}
{{- define "deepmoney.llm.engineArgs" -}}
- --max_model_len={{ .Values.serving.llm.maxModelLen }}
{{- if .Values.serving.llm.maxNumSeqs }}
- --max_num_seqs={{ .Values.serving.llm.maxNumSeqs }}
{{- end }}
{{- end }}

{{/* The namespaced TrainingRuntime's name. */}}
{{- define "deepmoney.trainingRuntime.name" -}}
{{- printf "%s-torch" (include "deepmoney.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The deepmoney settings of the ConfigMap: .Values.config with launch.namespace this namespace (the pipeline's
Role allows jobs here only), launch.volume_claim the workspace claim unless set, and, when the chart makes one,
launch.runtime its TrainingRuntime. */}}
{{- define "deepmoney.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $launch := get $config "launch" | default dict }}
{{- if and $launch.namespace (ne $launch.namespace .Release.Namespace) }}
{{- fail (printf "config.launch.namespace %s: the pipeline's Role allows training jobs in the release namespace %s only; drop it or install the chart there" $launch.namespace .Release.Namespace) }}
{{- end }}
{{- $_ := set $launch "namespace" .Release.Namespace }}
{{- if not $launch.volume_claim }}
{{- $_ := set $launch "volume_claim" (include "deepmoney.workspace.name" .) }}
{{- end }}
{{- if .Values.training.runtime.create }}
{{- $_ := set $launch "runtime" (include "deepmoney.trainingRuntime.name" .) }}
{{- $_ := set $launch "runtime_kind" "TrainingRuntime" }}
{{- end }}
{{- $_ := set $config "launch" $launch }}
{{- toYaml $config }}
{{- end }}

{{/* The shared workspace claim: the chart's, or one that exists (workspace.name). */}}
{{- define "deepmoney.workspace.name" -}}
{{- default (printf "%s-workspace" (include "deepmoney.fullname" .)) .Values.workspace.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Credentials never come from values (they would be readable in a ConfigMap or an object's spec): fail at
the first value that holds one, naming it but not showing it. (list PATH VALUE), walked recursively. */}}
{{- define "deepmoney.noCredentials" -}}
{{- $path := index . 0 }}
{{- $value := index . 1 }}
{{- if kindIs "map" $value }}
{{- range $key, $inner := $value }}
{{- $where := ternary $key (printf "%s.%s" $path $key) (eq $path "") }}
{{- if and (hasPrefix "config." $where) (regexMatch "(?i)(^|_)(password|token|api_key|access_key|credentials?)(_|$)" $key) }}
{{- fail (printf "%s: credentials do not go into the chart's values (the ConfigMap would show them); put them in a Secret and name it (docs/cluster.md)" $where) }}
{{- end }}
{{- include "deepmoney.noCredentials" (list $where $inner) }}
{{- end }}
{{- else if kindIs "slice" $value }}
{{- range $i, $inner := $value }}
{{- include "deepmoney.noCredentials" (list (printf "%s[%d]" $path $i) $inner) }}
{{- end }}
{{- else if and (kindIs "string" $value) (regexMatch "//[^/@:\\s]*:[^@\\s]+@" $value) }}
{{- fail (printf "%s holds a URL with a password: give the URL without it, and the credentials through a Secret (docs/cluster.md)" $path) }}
{{- end }}
{{- end }}
