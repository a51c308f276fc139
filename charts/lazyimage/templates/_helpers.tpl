{{/*
Names, labels and the image, shared by every template.
*/}}

{{/* The release's base name, at most 63 characters (DNS label). */}}
{{- define "lazyimage.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Names of the components' objects. */}}
{{- define "lazyimage.agent.name" -}}
{{- printf "%s-agent" (include "lazyimage.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "lazyimage.operator.name" -}}
{{- printf "%s-operator" (include "lazyimage.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The user name the API server gives the agent's ServiceAccount tokens. */}}
{{- define "lazyimage.agent.username" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "lazyimage.agent.name" .) -}}
{{- end -}}

{{/* Labels that select one component's pods; call with (dict "root" $ "component" "agent"). */}}
{{- define "lazyimage.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every object's labels; same argument as lazyimage.selectorLabels. */}}
{{- define "lazyimage.labels" -}}
{{ include "lazyimage.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: lazyimage
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "lazyimage.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}


{{/* KUBERNETES_SERVICE_HOST/PORT for a cluster where the `kubernetes` Service does not answer
(values `apiServer`); nothing when unset. */}}
{{- define "lazyimage.apiServerEnv" -}}
{{- with .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
{{- end }}
{{- with .Values.apiServer.port }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ . | toString | quote }}
{{- end }}
{{- end }}
